import numpy as np
import pyarrow as pa
import pytest
import torch
from truth import CHELSEA_CAT, iou

from camray.annotator import Annotator, PlainMode
from camray.cam.maps import normalize_maps
from camray.config import JobConfig
from camray.evaluation.sweep import predictor_of
from camray.image.decode import decode_image
from camray.io.schema import ROWS, decode_heatmap, decode_mask


def _batch(photos, names, size=224, policy="letterbox"):
    decoded = [decode_image(photos[name], size, policy) for name in names]
    n = len(names)
    return {
        "image_uri": np.array([f"/photos/{name}" for name in names], dtype=object),
        "source_version": np.array(["v"] * n, dtype=object),
        "content_sha256": np.array(["0" * 64] * n, dtype=object),
        "width": np.array([d.width for d in decoded], dtype=np.int32),
        "height": np.array([d.height for d in decoded], dtype=np.int32),
        "valid_width": np.array([d.valid_width for d in decoded], dtype=np.int32),
        "valid_height": np.array([d.valid_height for d in decoded], dtype=np.int32),
        "pixels": np.stack([d.pixels for d in decoded]),
        "error_stage": np.array([""] * n, dtype=object),
        "error_type": np.array([""] * n, dtype=object),
        "error_message": np.array([""] * n, dtype=object),
        "io_retries": np.zeros(n, dtype=np.int64),
    }


@pytest.fixture(scope="module")
def predictor():
    return predictor_of(JobConfig(), "test-run")


def test_rows_follow_the_schema_and_locate_the_cat(photos, predictor):
    table = predictor(_batch(photos, ["chelsea.png", "grace_hopper.jpg", "coffee.png"]))
    assert isinstance(table, pa.Table) and table.schema.equals(ROWS)
    rows = {row["image_uri"].rsplit("/", 1)[-1]: row for row in table.to_pylist()}
    chelsea = rows["chelsea.png"]
    assert chelsea["predictions"][0]["label"] in {"Egyptian cat", "tabby", "tiger cat"}
    assert len(chelsea["predictions"]) == 5 and len(chelsea["cams"]) == 5
    scores = [p["score"] for p in chelsea["predictions"]]
    assert scores == sorted(scores, reverse=True)
    first = chelsea["boxes"][0]
    assert first["class_id"] == chelsea["predictions"][0]["class_id"]
    assert iou((first["x0"], first["y0"], first["x1"], first["y1"]), CHELSEA_CAT) > 0.5
    assert 0 <= first["x0"] < first["x1"] <= 451 and 0 <= first["y0"] < first["y1"] <= 300
    assert rows["grace_hopper.jpg"]["predictions"][0]["label"] == "military uniform"
    heatmap = decode_heatmap(chelsea["cams"][0])
    assert heatmap.shape == (56, 56) and heatmap.max() == 1.0 and heatmap.min() == 0.0
    mask = decode_mask(chelsea["mask"])
    assert mask.shape == (300, 451) and 0.05 < mask.mean() < 1.0


def test_error_rows_pass_through(photos, predictor):
    batch = _batch(photos, ["chelsea.png", "coffee.png"])
    batch["error_stage"][1], batch["error_type"][1], batch["error_message"][1] = (
        "decode",
        "EmptyFile",
        "0 bytes",
    )
    rows = predictor(batch).to_pylist()
    assert [row["error_type"] for row in rows].count("EmptyFile") == 1
    assert sum(row["error_type"] is None for row in rows) == 1


def test_letterbox_maps_cover_the_whole_image_exactly(photos, lite0):
    """The same photo padded into a canvas and squashed must give boxes in the same original pixels."""
    config = JobConfig()
    annotator = Annotator(lite0, config.cam, config.boxes, torch.device("cpu"))
    assert isinstance(annotator.mode, PlainMode) and annotator.canvas_size == 224
    letter = decode_image(photos["chelsea.png"], 224, "letterbox")
    out = annotator.annotate(torch.from_numpy(letter.pixels)[None], torch.tensor([[224, 149]]))
    grid = out.maps.shape[-1]
    box = out.components.boxes[0] * torch.tensor([451 / grid, 300 / grid, 451 / grid, 300 / grid])
    assert box[2] <= 451 and box[3] <= 300
    # Padding contributes nothing: the bottom rows of the canvas are not part of any map.
    assert out.maps[0, 0, -1].max() > 0  # the last grid row is the photo's bottom edge, not padding


def test_refined_maps_are_the_class_map_times_the_finer_activation(photos, lite0):
    """`cam.refine`: normalise(class map x normalised mean activation of `features.11` ** power), on the same
    grid; the stored maps, thresholds and boxes all follow the refined map."""
    plain = JobConfig()
    refined = JobConfig.model_validate({"cam": {"refine": True, "refine_power": 2.0}})
    letter = decode_image(photos["chelsea.png"], 224, "letterbox")
    pixels, valid = torch.from_numpy(letter.pixels)[None], torch.tensor([[letter.valid_width, letter.valid_height]])
    base = Annotator(lite0, plain.cam, plain.boxes, torch.device("cpu"))
    sharp = Annotator(lite0, refined.cam, refined.boxes, torch.device("cpu"))
    assert sharp.refine_block is lite0.module.get_submodule("features.11") and base.refine_block is None
    captured = []
    handle = lite0.module.get_submodule("features.11").register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        out_base = base.annotate(pixels, valid)
    finally:
        handle.remove()
    out = sharp.annotate(pixels, valid)
    activation = captured[0].relu().mean(1, keepdim=True)
    fine = base._whole_image_maps(activation, valid, 224, grid=out.maps.shape[-1])
    expected = normalize_maps(out_base.maps * fine.pow(2.0))
    torch.testing.assert_close(out.maps, expected, atol=1e-5, rtol=0)
    assert torch.equal(out.class_ids, out_base.class_ids)
    # The class-agnostic activation concentrates the map: less of the image passes the same threshold.
    assert (out.maps >= 0.4).float().mean() < (out_base.maps >= 0.4).float().mean()


def test_balanced_keeps_the_plain_map_of_an_image_it_is_sure_of(photos, lite0):
    """`balanced` refines the maps of images the model is unsure of and leaves the others as `fast` has them,
    plain maps boxed at `cam.plain_threshold`, in one forward for the whole batch."""
    from camray.config import load_config

    balanced, fast = load_config(preset="balanced"), load_config(preset="fast")
    names = ["chelsea.png", "rocket.jpg", "astronaut.png", "coffee.png"]
    batch = _batch(photos, names)
    pixels = torch.from_numpy(batch["pixels"])
    valid = torch.from_numpy(np.stack([batch["valid_width"], batch["valid_height"]], 1))

    def annotate(config: JobConfig, **cam: object):
        return Annotator(lite0, config.cam.model_copy(update=cam), config.boxes, torch.device("cpu")).annotate(
            pixels, valid
        )

    out = annotate(balanced)
    plain, refined = annotate(fast), annotate(balanced, plain_above_score=None)
    sure = out.scores[:, 0] >= balanced.cam.plain_above_score
    assert sure.any() and not sure.all(), out.scores[:, 0]  # the premise: a mix of sure and unsure
    for index, keeps_plain in enumerate(sure.tolist()):
        expected = plain if keeps_plain else refined
        assert torch.equal(out.maps[index], expected.maps[index]), names[index]
        assert torch.equal(out.thresholds[index], expected.thresholds[index]), names[index]
    assert torch.equal(out.thresholds[sure], torch.full_like(out.thresholds[sure], balanced.cam.plain_threshold))


def _faulty_predictor(factory: str):
    from camray.models import get_spec

    config = JobConfig.model_validate(
        {
            "model": {
                "name": f"faulty_models:{factory}",
                "weights": get_spec("efficientnet_lite0").bundled_weights(),
                "target_layer": "features",
                "classifier_layer": "classifier.1",
            },
            "cam": {"top_k": 3},
        }
    )
    return predictor_of(config, "faults")


def test_a_poison_image_costs_only_itself(photos, caplog):
    """One image breaks its whole batch: the batch is split until it is alone; its neighbours get results."""
    import logging

    from faulty_models import has_poison_patch

    names = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "motorcycle_left.png", "grace_hopper.jpg"]
    batch = _batch(photos, names)
    batch["pixels"][3, :16, :16] = (255, 0, 255)  # the astronaut gets the patch the model chokes on
    predictor = _faulty_predictor("poisoned_lite0")
    assert has_poison_patch(
        predictor.annotator.prepare(
            torch.from_numpy(batch["pixels"]),
            torch.tensor(np.stack([batch["valid_width"], batch["valid_height"]], axis=1)),
        )
    ).tolist() == [False, False, False, True, False, False]
    with caplog.at_level(logging.WARNING, logger="camray.predictor"):
        rows = {row["image_uri"].rsplit("/", 1)[-1]: row for row in predictor(batch).to_pylist()}
    assert sorted(rows) == sorted(names)
    poisoned = rows["astronaut.png"]
    assert (poisoned["stage"], poisoned["error_type"]) == ("predict", "RuntimeError")
    assert "cannot digest" in poisoned["message"] and not poisoned["predictions"]
    for name in set(names) - {"astronaut.png"}:
        assert rows[name]["error_type"] is None and len(rows[name]["predictions"]) == 3
    assert rows["grace_hopper.jpg"]["predictions"][0]["label"] == "military uniform"
    splits = [r for r in caplog.records if "splitting" in r.message]
    assert 1 <= len(splits) <= 3  # halving 6 -> 3 -> 2 -> 1 touches one branch per level


@pytest.mark.parametrize("broken", ["row builder", "boxes"])
def test_a_fault_in_camray_s_own_code_fails_the_batch_in_one_call(photos, predictor, monkeypatch, broken):
    """A bug past the model's forward is the same for every image: the batch fails at once, instead of being
    split until each image is an error row of its own (2N - 1 calls for a batch of N)."""
    calls = []

    def fail(*_, **__):
        calls.append(1)
        raise KeyError("a bug of camray's")

    if broken == "row builder":
        monkeypatch.setattr("camray.predictor.result_table", fail)
    else:
        monkeypatch.setattr(predictor.annotator, "_components", fail)
    names = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "motorcycle_left.png", "grace_hopper.jpg"]
    with pytest.raises(KeyError, match="a bug of camray's"):
        predictor(_batch(photos, names))
    assert len(calls) == 1


def test_out_of_device_memory_halves_the_batch_and_says_so_once_per_halving(photos, caplog):
    """8 images against a limit of 3: halved to 4, then 2, each said once; the next batch runs at 2 silently."""
    import logging

    from faulty_models import BATCH_LIMIT

    names = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "motorcycle_left.png", "grace_hopper.jpg"]
    predictor = _faulty_predictor("memory_bound_lite0")
    with caplog.at_level(logging.WARNING, logger="camray.predictor"):
        first = predictor(_batch(photos, names + names[:2]))
        second = predictor(_batch(photos, names))
    for table in (first, second):
        rows = table.to_pylist()
        assert all(row["error_type"] is None and len(row["predictions"]) == 3 for row in rows)
    assert first.num_rows == 8 and second.num_rows == 6
    assert predictor.batch_cap is not None and predictor.batch_cap <= BATCH_LIMIT
    memory = [r.getMessage() for r in caplog.records if "out of device memory" in r.getMessage()]
    assert memory == [
        "out of device memory at a batch of 8 images; batches of 4 from now on",
        "out of device memory at a batch of 4 images; batches of 2 from now on",
    ]


def test_rows_without_labels_however_ray_hands_them_over(photos, predictor):
    """A batch whose labels column holds no labels at all reaches the actor as a null column (NaN floats), one
    with some as arrays: both are read as the rows' labels, none here."""
    batch = _batch(photos, ["chelsea.png", "coffee.png"])
    some = np.empty(2, dtype=object)
    some[:] = [None, np.array(["285"], dtype=object)]
    for column in (np.full(2, np.nan, dtype=np.float32), some):
        rows = predictor({**batch, "labels": column}).to_pylist()
        assert all(row["stage"] is None for row in rows), rows
        assert rows[0]["labels"] is None
    assert rows[1]["labels"] == [{"class_id": 285, "label": "Egyptian cat"}]


def _assert_same_batch(ours, theirs) -> None:
    for name in ("predicted_ids", "predicted_scores", "class_ids", "scores", "kept", "given", "maps", "thresholds"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    for name in ("map_index", "boxes", "area", "peak"):
        assert torch.equal(getattr(ours.components, name), getattr(theirs.components, name)), name
    torch.testing.assert_close(ours.components.mass, theirs.components.mass, rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"cam.refine": False}, {"boxes.threshold_rule": "percentile", "boxes.threshold": 0.9}],
    ids=["balanced", "unrefined", "percentile"],
)
def test_the_captured_box_stage_annotates_as_the_eager_steps(photos, lite0, overrides):
    """`runtime.capture_boxes` (on the CPU: the fixed-shape steps without a graph) gives the batch the eager steps
    give it: the maps, thresholds and boxes of refined and plain maps, under both threshold rules."""
    import copy

    from camray.config import load_config

    config = load_config(preset="balanced", overrides=overrides)
    names = ["chelsea.png", "rocket.jpg", "astronaut.png", "coffee.png", "grace_hopper.jpg"]
    batch = _batch(photos, names)
    pixels = torch.from_numpy(batch["pixels"])
    valid = torch.from_numpy(np.stack([batch["valid_width"], batch["valid_height"]], 1))
    eager = Annotator(copy.deepcopy(lite0), config.cam, config.boxes, torch.device("cpu"))
    captured = Annotator(lite0, config.cam, config.boxes, torch.device("cpu"), capture_boxes=True)
    assert eager.box_stage is None and captured.box_stage is not None  # on the CPU, only when asked
    _assert_same_batch(captured.annotate(pixels, valid), eager.annotate(pixels, valid))


def test_the_eager_steps_box_what_the_captured_stage_cannot(photos, lite0, caplog, monkeypatch):
    """A batch whose labelling did not settle in the stage's rounds, and a stage that cannot be captured (a fault
    injected into it): the eager steps box the batch, as without the stage; the failure is logged once."""
    import dataclasses
    import logging

    from camray.cam.box_stage import CapturedBoxStage
    from camray.config import load_config

    config = load_config(preset="balanced")
    batch = _batch(photos, ["chelsea.png", "rocket.jpg", "astronaut.png"])
    pixels = torch.from_numpy(batch["pixels"])
    valid = torch.from_numpy(np.stack([batch["valid_width"], batch["valid_height"]], 1))
    annotator = Annotator(lite0, config.cam, config.boxes, torch.device("cpu"), capture_boxes=True)
    settings = annotator.box_stage.settings
    stage, annotator.box_stage = annotator.box_stage, None
    reference = annotator.annotate(pixels, valid)

    annotator.box_stage = CapturedBoxStage(dataclasses.replace(settings, label_rounds=1), torch.device("cpu"))
    with caplog.at_level(logging.INFO, logger="camray.annotator"):
        _assert_same_batch(annotator.annotate(pixels, valid), reference)
    assert any("more than 1 labelling rounds" in r.getMessage() for r in caplog.records)

    def broken(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr("camray.cam.box_stage._whole_image_maps", broken)
    annotator.box_stage = stage
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="camray.annotator"):
        for _ in range(2):
            _assert_same_batch(annotator.annotate(pixels, valid), reference)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "could not be captured at 16 images" in warnings[0], warnings
    assert "stream is capturing" in warnings[0]


def test_two_threads_share_a_predictor_as_a_gpu_actors_two_calls_do(photos, tmp_path):
    """A GPU actor holds two batches at once (`camray.planning.GPU_CALLS_PER_ACTOR`), each called from a thread of
    its own: every batch gets the rows it gets alone, decoded in the read tasks or by the actor, and boxed by the
    captured stage."""
    from concurrent.futures import ThreadPoolExecutor

    from camray.image.decode import DecodeLimits
    from camray.reader import read_decode_batch

    for name, data in photos.items():
        (tmp_path / name).write_bytes(data)
    names = sorted(photos)
    config = JobConfig.model_validate({"runtime": {"capture_boxes": True}})
    predictor = predictor_of(config, "threads")
    assert predictor.annotator.box_stage is not None
    batches = []
    for start, decode in ((0, "device"), (2, "cpu"), (4, "device"), (1, "cpu")):
        listing = {
            "uri": np.array([str(tmp_path / name) for name in names[start : start + 3]], dtype=object),
            "version": np.array(["v"] * len(names[start : start + 3]), dtype=object),
        }
        batches.append(
            read_decode_batch(
                listing, input_size=224, policy="letterbox", s3={}, limits=DecodeLimits().__dict__, decode=decode
            )
        )
    alone = [predictor(batch) for batch in batches]
    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(pool.map(predictor, batches * 2))
    for table, expected in zip(together, alone * 2, strict=True):
        assert table.equals(expected)
