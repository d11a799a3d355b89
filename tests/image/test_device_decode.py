"""`runtime.decode: device`: the predictor's batched JPEG decoding (run here on the CPU, the same calls as on a
GPU with `device="cpu"`) against the read tasks' PIL decoding, image by image and through the predictor."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from camray.config import JobConfig
from camray.evaluation.sweep import predictor_of
from camray.image.decode import DecodedImage, decode_image, probe_image
from camray.image.device_decode import decode_to_canvases, orient
from camray.reader import read_decode_batch

CPU = torch.device("cpu")


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def chelsea(photos) -> Image.Image:
    return Image.open(io.BytesIO(photos["chelsea.png"])).convert("RGB")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientations_match_pil(orientation):
    pixels = np.random.default_rng(orientation).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = Image.fromarray(pixels)
    image.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(image))
    ours = orient(torch.from_numpy(pixels).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("policy", ["letterbox", "squash"])
def test_device_canvases_match_the_cpu_decoder(chelsea, photos, policy):
    """JPEGs (upright and EXIF-rotated) on the device path, a PNG and a CMYK JPEG through its CPU fallback, and
    a truncated JPEG whose header reads fine but whose data does not: one failure, the rest like PIL's."""
    rotated = Image.Exif()
    rotated[0x0112] = 6
    jpeg = photos["grace_hopper.jpg"]
    inputs = [
        _encode(chelsea, "JPEG", quality=95),
        _encode(chelsea, "JPEG", quality=95, exif=rotated.tobytes()),
        jpeg,
        photos["coffee.png"],
        _encode(chelsea.convert("CMYK"), "JPEG", quality=95),
        jpeg[: len(jpeg) // 3],
    ]
    probes = [probe_image(data) for data in inputs]
    assert [p.jpeg_rgb_or_gray for p in probes] == [True, True, True, False, False, True]
    canvases = decode_to_canvases(
        inputs, [p.orientation for p in probes], [p.jpeg_rgb_or_gray for p in probes], 224, policy, CPU
    )
    assert canvases.decoded == [0, 1, 2, 3, 4] and list(canvases.failed) == [5]
    assert canvases.failed[5].error_type in {"OSError", "SyntaxError"}
    for row, position in enumerate(canvases.decoded):
        reference = decode_image(inputs[position], 224, policy)
        assert isinstance(reference, DecodedImage)
        assert canvases.valid_wh[row].tolist() == [reference.valid_width, reference.valid_height]
        diff = np.abs(canvases.pixels[row].numpy().astype(np.int16) - reference.pixels.astype(np.int16))
        # PIL decodes JPEGs at a reduced DCT scale first (draft mode); the device path resizes from full size.
        assert diff.mean() < 4.0, (position, diff.mean())


def test_predictor_gives_the_same_answers_from_bytes(photos, tmp_path):
    for name, data in photos.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "truncated.jpg").write_bytes(photos["grace_hopper.jpg"][:5000])
    listing = {
        "uri": np.array(sorted(str(p) for p in tmp_path.iterdir()), dtype=object),
        "version": np.array([""] * (len(photos) + 1), dtype=object),
    }
    predictor = predictor_of(JobConfig(), "device-decode")
    tables = {}
    for decode in ("cpu", "device"):
        batch = read_decode_batch(listing, input_size=224, policy="letterbox", s3={}, limits={}, decode=decode)
        assert ("encoded" in batch) == (decode == "device") and ("pixels" in batch) == (decode == "cpu")
        tables[decode] = {row["image_uri"]: row for row in predictor(batch).to_pylist()}
    assert tables["cpu"].keys() == tables["device"].keys()
    for uri, cpu_row in tables["cpu"].items():
        device_row = tables["device"][uri]
        if uri.endswith("truncated.jpg"):
            assert cpu_row["stage"] == device_row["stage"] == "decode"
            continue
        assert device_row["error_type"] is None
        assert (device_row["width"], device_row["height"]) == (cpu_row["width"], cpu_row["height"])
        assert device_row["predictions"][0]["class_id"] == cpu_row["predictions"][0]["class_id"], uri
        cpu_box, device_box = cpu_row["boxes"][0], device_row["boxes"][0]
        size = max(cpu_row["width"], cpu_row["height"])
        for key in ("x0", "y0", "x1", "y1"):
            assert abs(cpu_box[key] - device_box[key]) <= 0.1 * size, (uri, key)


def test_device_canvases_follow_the_models_interpolation(chelsea):
    """Bicubic on the device path too: closer to the CPU decoder's bicubic canvas than to its bilinear one."""
    data = _encode(chelsea, "JPEG", quality=95)
    canvases = decode_to_canvases([data], [1], [True], 224, "squash", CPU, interpolation="bicubic")
    ours = canvases.pixels[0].numpy().astype(np.int16)
    bicubic = decode_image(data, 224, "squash", interpolation="bicubic").pixels.astype(np.int16)
    bilinear = decode_image(data, 224, "squash").pixels.astype(np.int16)
    assert np.abs(ours - bicubic).mean() < 4.0
    assert np.abs(ours - bicubic).mean() < np.abs(ours - bilinear).mean()


def test_images_of_one_size_are_resized_together_bit_for_bit_as_one_by_one(chelsea, photos, monkeypatch):
    from camray.image import device_decode

    rotated = Image.Exif()
    rotated[0x0112] = 6
    inputs = [
        _encode(chelsea, "JPEG", quality=95),
        photos["grace_hopper.jpg"],
        _encode(chelsea, "JPEG", quality=90),
        _encode(chelsea, "JPEG", quality=95, exif=rotated.tobytes()),
        _encode(chelsea, "JPEG", quality=80),
    ]
    orientations = [probe_image(data).orientation for data in inputs]
    together = decode_to_canvases(inputs, orientations, [True] * 5, 224, "letterbox", CPU)
    monkeypatch.setattr(device_decode, "RESIZE_PIXELS_PER_CALL", 1)  # one image a call
    alone = decode_to_canvases(inputs, orientations, [True] * 5, 224, "letterbox", CPU)
    assert together.decoded == alone.decoded == [0, 1, 2, 3, 4]
    assert torch.equal(together.pixels, alone.pixels) and torch.equal(together.valid_wh, alone.valid_wh)
    assert together.valid_wh[3].tolist() == together.valid_wh[0].tolist()[::-1]  # the rotated one: its own call
