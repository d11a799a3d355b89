"""The windows mode through the real job, its COCO export and pycocotools, on the multi-object scenes."""

from __future__ import annotations

import shutil
from collections import defaultdict

import pytest

pytestmark = pytest.mark.integration


def test_windows_mode_boxes_several_classes_of_a_scene_through_the_job(ray_cluster, tmp_path) -> None:
    from camray.config import load_config
    from camray.evaluation import scenes
    from camray.evaluation.evaluate import load_truth
    from camray.evaluation.multi import detections_from_coco, evaluate_detections
    from camray.io.output import Output
    from camray.outputs.export import coco
    from camray.runner import run_job

    truth = load_truth(scenes.build(tmp_path / "scenes", per_texture=1))  # one two-object scene a texture
    images = tmp_path / "images"
    images.mkdir()
    names = sorted(name for name in truth if name.startswith("scene_"))
    assert names and all(len(truth[name].boxes) == 2 for name in names)
    for name in names:
        shutil.copyfile(tmp_path / "scenes" / "images" / name, images / name)
    config = load_config(
        overrides={"source.uri": str(images), "sink.uri": str(tmp_path / "out"), "runtime.batch_size": 4},
        preset="detect",
    )
    summary = run_job(config)
    assert (summary.status, summary.results, summary.errors) == ("succeeded", len(names), 0)

    exported = coco(Output(str(tmp_path / "out")), min_score=0.0)
    detections = detections_from_coco(exported)
    classes: dict[str, set[int]] = defaultdict(set)
    for name, found in detections.items():
        classes[name] = {d.class_id for d in found}
    assert max(len(found) for found in classes.values()) >= 2, classes
    report = evaluate_detections(detections, {name: truth[name] for name in names})
    assert report.images == len(names) and report.objects == 2 * len(names)
    assert report.object_recall > 0 and report.ap50 is not None  # pycocotools scored the export
