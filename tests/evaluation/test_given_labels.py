"""Image-level labels from the truth's kinds: how a kind becomes a head's classes, and the given-labels sweep on the
real scenes and evaluation photos."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from camray.evaluation import multi, scenes
from camray.evaluation.evalset import CATS, UNIFORM
from camray.evaluation.evaluate import Truth, load_truth
from camray.evaluation.given_labels import image_kinds, imagenet_labels, trained_labels, truth_for_head
from camray.evaluation.segset import CLASSES, IMAGENET_KINDS


def _truth() -> dict[str, Truth]:
    """A scene of a cat and an officer, and a photo of two people (class-agnostic) and an ARC product."""
    return {
        "scene.png": Truth(
            boxes=[(0, 0, 10, 10), (20, 0, 30, 10)], box_classes=[set(CATS), set(UNIFORM)], box_kinds=["cat", "person"]
        ),
        "photo.png": Truth(
            boxes=[(0, 0, 10, 10), (20, 0, 30, 10), (40, 0, 50, 10)],
            box_classes=[set(), set(), set()],
            box_kinds=["person", "person", "fiskars_scissors"],
        ),
    }


def test_each_kind_becomes_the_class_of_it_the_head_scores_highest() -> None:
    truth = _truth()
    assert image_kinds(truth) == {"scene.png": ["cat", "person"], "photo.png": ["person", "fiskars_scissors"]}
    scores = {name: np.zeros(1000, dtype=np.float32) for name in truth}
    scores["scene.png"][[CATS[3], UNIFORM[0], 399]] = [0.2, 0.1, 0.9]  # 399 is a person's class, not the officer's
    scores["photo.png"][IMAGENET_KINDS["person"][4]] = 0.3
    labels = imagenet_labels(truth, scores)
    # The officer accepts the uniform only; the photo's people, scored class-agnostically, any of a person's
    # classes; the scissors have no ImageNet class and are not given.
    assert labels == {"scene.png": [str(CATS[3]), str(UNIFORM[0])], "photo.png": [str(IMAGENET_KINDS["person"][4])]}
    every = imagenet_labels(truth, rule="all")
    assert every["scene.png"] == [*map(str, sorted(CATS)), str(UNIFORM[0])]
    with pytest.raises(ValueError, match="scores"):
        imagenet_labels(truth)


def test_a_trained_heads_truth_is_its_own_classes_by_kind() -> None:
    truth = _truth()
    categories = ("cat", "person", "rocket")
    retargeted = truth_for_head(truth, categories)
    assert retargeted["scene.png"].box_classes == [{0}, {1}] and retargeted["scene.png"].classes == {0, 1}
    assert retargeted["photo.png"].box_classes == [{1}, {1}, set()]  # a kind the head lacks stays class-agnostic
    assert truth["photo.png"].box_classes == [set(), set(), set()]  # the truth itself is untouched
    assert trained_labels(image_kinds(truth), categories) == {"scene.png": ["cat", "person"], "photo.png": ["person"]}
    with pytest.raises(ValueError, match="kind"):
        truth_for_head({"old.png": Truth(boxes=[(0, 0, 1, 1)], box_classes=[{1}])}, categories)


def test_the_scorer_of_an_export_takes_the_heads_labels(tmp_path, capsys) -> None:
    """`multi --labels`: a trained head's export, whose category ids are its classes, scored against the kinds."""
    truth_csv = tmp_path / "truth.csv"
    truth_csv.write_text(
        "file,x0,y0,x1,y1,class_id,kind\n"
        f"a.png,0,0,100,100,{' '.join(map(str, CATS))},cat\n"
        "a.png,200,0,300,100,,person\n"
    )
    (tmp_path / "labels.txt").write_text("person\ncat\n")
    export = {
        "images": [{"id": 1, "file_name": "dir/a.png"}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "score": 0.9},  # the cat as `cat`
            {"image_id": 1, "category_id": 0, "bbox": [200, 0, 100, 100], "score": 0.8},  # the person as `person`
            {"image_id": 1, "category_id": 0, "bbox": [0, 0, 100, 100], "score": 0.7},  # the cat as `person`
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(export))
    args = ["--coco", str(tmp_path / "coco.json"), "--truth", str(truth_csv), "--json", str(tmp_path / "r.json")]
    assert multi.main([*args, "--labels", str(tmp_path / "labels.txt")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["object_recall"], report["box_precision"]) == (1.0, pytest.approx(2 / 3))
    assert multi.main(args) == 0  # ImageNet's truth: classes 0 and 1 are no cat, and the person is class-agnostic
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["object_recall"], report["box_precision"]) == (0.5, pytest.approx(1 / 3))
    assert "object recall" in capsys.readouterr().out


def test_the_given_labels_sweep_on_real_scenes_and_photos(tmp_path, lite0, built_evalset) -> None:
    """Both heads, `cam.classes: given`, through the actors' predictor: every image gets its kinds, and maps and
    boxes only for them; ImageNet's head the best class of each kind, a trained head its classes by name."""
    from camray.evaluation.multi_sweep import Head, run

    scenes.build(tmp_path / "scenes", per_texture=1)
    evalset = tmp_path / "evalset"  # the sample photos and the VOC photo of the built set: a lean run
    (evalset / "images").mkdir(parents=True)
    kept = ["photo_cat.png", "photo_officer.png", "photo_voc.png"]
    rows = [line for line in built_evalset.read_text().splitlines()[1:] if line.split(",")[0] in kept]
    (evalset / "truth.csv").write_text("\n".join([built_evalset.read_text().splitlines()[0], *rows]) + "\n")
    for name in kept:
        shutil.copyfile(built_evalset.parent / "images" / name, evalset / "images" / name)

    (result,) = run(tmp_path / "scenes", evalset, [("fast", {})], head=Head(), classes="given")
    scene_rows, single_rows = result["rows"]
    truth = load_truth(tmp_path / "scenes" / "truth.csv")
    assert set(scene_rows) == set(truth)  # every scene and photo has a kind ImageNet names
    for name, row in scene_rows.items():
        given = {label["class_id"] for label in row["labels"]}
        assert len(given) == len(image_kinds({name: truth[name]})[name]) - (name == "photo_arc2017.png") * 5
        assert {cam["class_id"] for cam in row["cams"]} == given
        assert row["boxes"] and {box["class_id"] for box in row["boxes"]} <= given
    cat = {label["class_id"] for label in single_rows["photo_cat.png"]["labels"]}
    assert cat == {single_rows["photo_cat.png"]["predictions"][0]["class_id"]} <= set(CATS)  # the best cat class
    assert result["single"].images == 3 and result["scenes"].objects == sum(len(gt.boxes) for gt in truth.values())
    assert result["scenes_alone"].objects == sum(len(gt.boxes) for name, gt in truth.items() if "scene" in name)

    head = tmp_path / "head"  # a trained head's checkpoint and labels, random weights: the kinds path end to end
    head.mkdir()
    state = {key: value.clone() for key, value in lite0.module.state_dict().items()}
    state["classifier.1.weight"] = torch.randn(len(CLASSES), 1280, generator=torch.Generator().manual_seed(0)) * 0.01
    state["classifier.1.bias"] = torch.zeros(len(CLASSES))
    torch.save(state, head / "head.pth")
    (head / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    (trained,) = run(tmp_path / "scenes", evalset, [("fast", {})], head=Head(str(head)), classes="given")
    scene_rows, _ = trained["rows"]
    for name, row in scene_rows.items():
        assert [label["label"] for label in row["labels"]] == image_kinds({name: truth[name]})[name]
        assert {box["label"] for box in row["boxes"]} <= set(image_kinds({name: truth[name]})[name])
    assert trained["scenes"].objects == result["scenes"].objects


def test_the_bench_manifest_gives_each_image_its_labels(tmp_path) -> None:
    """`head_bench.write_manifest`: a CSV a job reads (`camray.io.listing`) with each labelled image's labels, an
    image without labels left out; the job's flags load a trained head's checkpoint and names as a sigmoid head."""
    from camray.evaluation.head_bench import head_flags, write_manifest
    from camray.io.listing import iter_listing
    from camray.io.sources import S3Settings

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (images / name).write_bytes(b"")
    labels = {"a.png": ["cat", "person"], "c.png": ["281"]}
    manifest = write_manifest(tmp_path / "bench" / "manifest.csv", images, labels)
    (table,) = iter_listing(str(manifest), [".png"], True, S3Settings())
    listed = dict(zip(table.column("uri").to_pylist(), table.column("labels").to_pylist(), strict=True))
    assert listed == {str(images / "a.png"): ["cat", "person"], str(images / "c.png"): ["281"]}
    assert head_flags("imagenet", tmp_path) == []
    flags = head_flags("trained", tmp_path)
    assert dict(zip(flags[::2], flags[1::2], strict=True)) == {
        "--model.name": "efficientnet_lite0",
        "--weights": str(tmp_path / "head.pth"),
        "--model.labels": str(tmp_path / "labels.txt"),
        "--model.head": "sigmoid",
    }


def test_a_sigmoid_head_is_never_gated_to_plain_maps(tmp_path, lite0) -> None:
    """`cam.plain_above_score` keeps the plain map of the images a softmax head is sure of; a sigmoid head scores a
    small object in a scene as surely as a close-up (every scene's given kinds above `balanced`'s 0.3 with the
    trained kinds head, docs/localization-multi.md), so its images all take the refined maps."""
    from camray.annotator import Annotator
    from camray.config import load_config
    from camray.evaluation.multi_sweep import head_overrides
    from camray.models import resolve_setup

    head = tmp_path / "head"
    head.mkdir()
    state = {key: value.clone() for key, value in lite0.module.state_dict().items()}
    state["classifier.1.weight"] = state["classifier.1.weight"][: len(CLASSES)].clone()
    state["classifier.1.bias"] = state["classifier.1.bias"][: len(CLASSES)].clone()
    torch.save(state, head / "head.pth")
    (head / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    scores = torch.tensor([[0.95, 0.01], [0.2, 0.1]])
    softmax = load_config(preset="balanced", overrides={"sink.uri": "unused"})
    gated = Annotator(lite0, softmax.cam, softmax.boxes, torch.device("cpu"))._keeps_plain(scores)
    assert gated.tolist() == [True, False]
    sigmoid = load_config(preset="balanced", overrides={"sink.uri": "unused", **head_overrides(str(head))})
    annotator = Annotator(resolve_setup(sigmoid.model), sigmoid.cam, sigmoid.boxes, torch.device("cpu"))
    assert annotator.setup.head == "sigmoid" and annotator._keeps_plain(scores).tolist() == [False, False]
