import io

import numpy as np
import pytest
from PIL import Image

from camray.image.decode import DecodedImage, DecodeError, DecodeLimits, decode_image, fit_size


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def chelsea(photos) -> Image.Image:
    return Image.open(io.BytesIO(photos["chelsea.png"])).convert("RGB")


def test_letterbox_keeps_aspect_and_whole_image(photos):
    decoded = decode_image(photos["chelsea.png"], 224, "letterbox")
    assert isinstance(decoded, DecodedImage)
    assert (decoded.width, decoded.height) == (451, 300)
    assert (decoded.valid_width, decoded.valid_height) == (224, 149)
    assert decoded.pixels.shape == (224, 224, 3) and decoded.pixels.dtype == np.uint8
    assert decoded.pixels[149:].max() == 0  # padding below the image
    assert decoded.pixels[:149].mean() > 50  # the photo itself


def test_squash_fills_the_canvas(photos):
    decoded = decode_image(photos["grace_hopper.jpg"], 224, "squash")
    assert isinstance(decoded, DecodedImage)
    assert (decoded.width, decoded.height, decoded.valid_width, decoded.valid_height) == (512, 600, 224, 224)


def test_decoded_pixels_match_a_plain_resize(chelsea):
    decoded = decode_image(_encode(chelsea, "PNG"), 224, "squash")
    reference = np.asarray(chelsea.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.int16)
    assert np.abs(decoded.pixels.astype(np.int16) - reference).mean() < 1.0


@pytest.mark.parametrize(
    "orientation,expected_size", [(1, (451, 300)), (3, (451, 300)), (6, (300, 451)), (8, (300, 451))]
)
def test_exif_orientation_is_applied(chelsea, orientation, expected_size):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(chelsea, "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(data, 128, "letterbox")
    assert isinstance(decoded, DecodedImage)
    assert (decoded.width, decoded.height) == expected_size
    upright = {
        1: chelsea,
        3: chelsea.rotate(180),
        6: chelsea.transpose(Image.Transpose.ROTATE_270),
        8: chelsea.transpose(Image.Transpose.ROTATE_90),
    }[orientation]
    reference = decode_image(_encode(upright, "PNG"), 128, "letterbox")
    diff = np.abs(decoded.pixels.astype(np.int16) - reference.pixels.astype(np.int16)).mean()
    assert diff < 6.0  # JPEG loss only; a wrong rotation differs by tens


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16"])
def test_modes_become_rgb(chelsea, mode):
    if mode == "I;16":
        image = Image.fromarray(np.asarray(chelsea.convert("L"), dtype=np.uint16) * 256)
        fmt = "PNG"
    else:
        image = chelsea.convert(mode)
        fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = decode_image(_encode(image, fmt), 96, "squash")
    assert isinstance(decoded, DecodedImage), decoded
    assert decoded.pixels.shape == (96, 96, 3)
    grey = np.asarray(chelsea.convert("L").resize((96, 96), Image.Resampling.BILINEAR), dtype=np.float32)
    assert abs(decoded.pixels.mean() - grey.mean()) < 20


def test_transparent_pixels_are_composited_on_white():
    image = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    decoded = decode_image(_encode(image, "PNG"), 32, "squash")
    assert decoded.pixels.min() == 255


@pytest.mark.parametrize(
    "data,error_type",
    [
        (b"", "EmptyFile"),
        (b"this is a text file, not an image\n" * 10, "UnidentifiedImageError"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "UnidentifiedImageError"),
    ],
)
def test_broken_inputs_are_errors_not_exceptions(data, error_type):
    decoded = decode_image(data, 224, "letterbox")
    assert isinstance(decoded, DecodeError)
    assert decoded.error_type == error_type and decoded.message


def test_truncated_jpeg_is_an_error(photos):
    data = photos["grace_hopper.jpg"]
    decoded = decode_image(data[: len(data) // 3], 224, "letterbox")
    assert isinstance(decoded, DecodeError)
    assert "truncated" in decoded.message.lower()


def test_limits_refuse_bombs_before_decoding(chelsea):
    data = _encode(chelsea, "PNG")
    too_many = decode_image(data, 224, "letterbox", DecodeLimits(max_pixels=100 * 100))
    assert isinstance(too_many, DecodeError) and too_many.error_type == "ImageTooLarge"
    too_big = decode_image(data, 224, "letterbox", DecodeLimits(max_bytes=1000))
    assert isinstance(too_big, DecodeError) and too_big.error_type == "FileTooLarge"


def test_fit_size():
    assert fit_size(451, 300, 224, "letterbox") == (224, 149)
    assert fit_size(300, 451, 224, "letterbox") == (149, 224)
    assert fit_size(5000, 10, 224, "letterbox") == (224, 1)
    assert fit_size(451, 300, 224, "squash") == (224, 224)


def test_the_models_interpolation_resizes_the_image(chelsea):
    """A timm model's `pretrained_cfg` names its resampling (bicubic, most of them): the decoded canvas is PIL's
    resize with that filter, and differs from the bilinear one; a name PIL has no filter for resizes bilinearly."""
    data = _encode(chelsea, "PNG")
    bicubic = decode_image(data, 224, "squash", interpolation="bicubic")
    bilinear = decode_image(data, 224, "squash")
    reference = np.asarray(chelsea.resize((224, 224), Image.Resampling.BICUBIC), dtype=np.int16)
    assert np.abs(bicubic.pixels.astype(np.int16) - reference).mean() < 1.0
    assert np.abs(bicubic.pixels.astype(np.int16) - bilinear.pixels.astype(np.int16)).mean() > 0.5
    assert np.array_equal(decode_image(data, 224, "squash", interpolation="random").pixels, bilinear.pixels)
