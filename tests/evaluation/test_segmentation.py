"""The mIoU scorer: against an obvious per-class count, and on folders numbered differently, as a user runs it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from camray.cam.label_maps import IGNORE
from camray.evaluation.segmentation import Confusion, main, score_folders
from camray.outputs.label_png import write_classes, write_label_png


def test_confusion_matches_counting_each_class_by_hand() -> None:
    rng = np.random.default_rng(0)
    names = ["background", "a", "b", "c"]
    truths = [rng.integers(0, 4, (20, 30)) for _ in range(3)]
    preds = [rng.integers(0, 4, (20, 30)) for _ in range(3)]
    truths[0][:5] = IGNORE
    preds[1][:, :4] = IGNORE
    preds[2][preds[2] == 3] = 2  # class c is never predicted
    confusion = Confusion(names)
    for truth, pred in zip(truths, preds, strict=True):
        confusion.add(truth, pred)
    report = confusion.report()
    t = np.concatenate([x.ravel() for x in truths])
    p = np.concatenate([x.ravel() for x in preds])
    p, t = p[t != IGNORE], t[t != IGNORE]
    ious = []
    for c in range(4):
        tp = np.sum((t == c) & (p == c))
        fp = np.sum((t != c) & (p == c))
        fn = np.sum((t == c) & (p != c))  # a predicted IGNORE is a miss
        ious.append(tp / (tp + fp + fn))
        assert report.classes[names[c]].iou == pytest.approx(ious[-1])
        assert report.classes[names[c]].truth_pixels == np.sum(t == c)
    assert report.miou == pytest.approx(np.mean(ious))
    assert report.labelled == pytest.approx(np.mean(p != IGNORE))
    labelled = p != IGNORE
    assert report.pixel_accuracy == pytest.approx(np.mean(t == p))
    assert report.miou_labelled == pytest.approx(
        np.mean([np.sum((t == c) & (p == c) & labelled) / np.sum(((t == c) | (p == c)) & labelled) for c in range(4)])
    )


def _folder(root, classes, maps):
    write_classes(root, classes)
    for name, label_map in maps.items():
        write_label_png(root / name, np.asarray(label_map, dtype=np.uint8))
    return root


def test_folders_are_matched_by_class_name_and_by_file(tmp_path) -> None:
    truth = _folder(
        tmp_path / "truth",
        ["cat", "dog"],
        {"x.png": [[0, 1], [2, 255]], "y.png": [[1, 1], [0, 0]], "z.png": [[2, 2], [2, 2]]},
    )
    # The predictions number the classes the other way round, lie in a sub-folder, and z has none.
    pred = _folder(tmp_path / "pred", ["dog", "cat"], {"sub/x.png": [[0, 2], [1, 1]], "y.png": [[2, 0], [0, 0]]})
    report = score_folders(pred, truth)
    assert (report.images, report.missing) == (3, 1)
    # cat: truth x(0,1), y(0,0), y(0,1); predicted x(0,1), y(0,0): 2 hits, 1 miss.
    assert report.classes["cat"].iou == pytest.approx(2 / 3)
    # dog: truth x(1,0) + z's four pixels (z scored as background); predicted x(1,0): 1 of 5.
    assert report.classes["dog"].iou == pytest.approx(1 / 5)
    # background: truth x(0,0), y(1,0), y(1,1); predicted there and at y(0,1) and z's four: 3 of 8.
    assert report.classes["background"].iou == pytest.approx(3 / 8)
    out = tmp_path / "report.json"
    assert main(["--pred", str(pred), "--truth", str(truth), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["miou"] == pytest.approx(report.miou)


def test_bad_folders_exit_2_naming_the_problem(tmp_path, capsys) -> None:
    truth = _folder(tmp_path / "truth", ["cat"], {"x.png": [[0, 1]]})
    pred = _folder(tmp_path / "pred", ["cat"], {"x.png": [[0, 3]]})
    with pytest.raises(SystemExit) as exit_info:
        main(["--pred", str(pred), "--truth", str(truth)])
    assert exit_info.value.code == 2
    assert "values [3]" in capsys.readouterr().err
    _folder(pred, ["cat"], {"x.png": [[0, 1, 1]]})
    with pytest.raises(ValueError, match="3x1 pixels, its truth 2x1"):
        score_folders(pred, truth)
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match="classes.txt"):
        score_folders(tmp_path / "bare", truth)
