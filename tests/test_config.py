import os
import subprocess
import sys
from pathlib import Path

import pytest

from camray.config import ConfigError, JobConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_demo():
    config = JobConfig()
    assert config.model.name == "efficientnet_lite0" and config.source.uri == "samples"


def test_unknown_key_is_refused_with_its_path(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("model:\n  name: resnet50\n  wieghts: /tmp/x.pth\n")
    with pytest.raises(ConfigError, match=r"model\.wieghts: Extra inputs are not permitted"):
        load_config(path)


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match=r"cam\.top_k"):
        load_config(overrides={"cam.top_k": 0})
    with pytest.raises(ConfigError, match=r"boxes\.threshold"):
        load_config(overrides={"boxes.threshold": 1.5})
    with pytest.raises(ConfigError, match=r"model\.resize"):
        load_config(overrides={"model.resize": "crop"})
    with pytest.raises(ConfigError, match="`source.uri` and `sink.uri` must differ"):
        load_config(overrides={"source.uri": "out", "sink.uri": "out/"})


def test_overrides_beat_the_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("cam:\n  top_k: 3\nsink:\n  uri: s3://b/p\n")
    config = load_config(path, {"cam.top_k": 7})
    assert config.cam.top_k == 7 and config.sink.uri == "s3://b/p"


def test_fingerprint_follows_results_not_runtime():
    base = load_config()
    assert base.fingerprint() == load_config(overrides={"runtime.batch_size": 64, "sink.uri": "x"}).fingerprint()
    assert base.fingerprint() != load_config(overrides={"boxes.threshold": 0.3}).fingerprint()


def _run_clis(*commands: tuple[str, ...], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Each command's CLI process, all at once: each is a fresh interpreter that spends its seconds importing."""
    started = [
        (
            args,
            subprocess.Popen(
                [sys.executable, str(REPO / "jobs" / "cam_batch.py"), *args],
                cwd=cwd,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ),
        )
        for args in commands
    ]
    finished = []
    for args, process in started:
        stdout, stderr = process.communicate(timeout=300)  # a generous deadline: six interpreters on a shared host
        finished.append(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))
    return finished


def test_cli_fails_before_any_work(tmp_path):
    """Setup problems exit 2 before the lease: a bad field, an unknown model, a method or a refine block the model
    cannot have, a labels file of another length than the head, a head that fits no supported architecture."""
    import torch
    import torchvision

    out = str(tmp_path / "out")
    model = torchvision.models.resnet18(num_classes=20)
    torch.save(model.state_dict(), tmp_path / "resnet18-20.pth")
    model.fc = torch.nn.Linear(256, 20)  # a head for another trunk
    torch.save(model.state_dict(), tmp_path / "resnet18-narrow.pth")
    (tmp_path / "names.txt").write_text("".join(f"c{index}\n" for index in range(19)))
    fine_tuned = ("--model", "resnet18", "--input", str(tmp_path), "--output", out, "--weights")
    bad, unknown, cam_on_vgg, refine_unknown, labels, head = _run_clis(
        ("--cam.top_k", "0", "--output", out),
        ("--model", "resnet5", "--output", out),
        ("--model", "vgg16", "--cam.method", "cam", "--output", out),
        ("--model", "vit_b_16", "--preset", "accurate", "--output", out),
        (*fine_tuned, str(tmp_path / "resnet18-20.pth"), "--model.labels", str(tmp_path / "names.txt")),
        (*fine_tuned, str(tmp_path / "resnet18-narrow.pth")),
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "cam.top_k" in bad.stderr
    assert unknown.returncode == 2 and "`model.name` 'resnet5'" in unknown.stderr
    assert cam_on_vgg.returncode == 2 and "`cam.method` is `cam`" in cam_on_vgg.stderr
    # A ViT has no block finer than its token grid for the tiles' `layer` fusion.
    assert refine_unknown.returncode == 2 and "need `cam.refine_layer` for 'vit_b_16'" in refine_unknown.stderr
    assert labels.returncode == 2 and "holds 19 class names, but the model's head has 20 outputs" in labels.stderr
    assert head.returncode == 2 and "layer `fc` (fc.weight) is [20, 256] in the weights but [1000, 512]" in head.stderr
    assert not (tmp_path / "out").exists()  # no lease, no runs row, no listing
    # The message alone: no traceback, nothing of Ray's (a setup refused before the lease has no log to keep).
    for ran in (unknown, cam_on_vgg, refine_unknown, labels, head):
        assert len(ran.stderr.strip().splitlines()) == 1 and not ran.stdout, ran.stdout + ran.stderr


# The fingerprint of the `fast` preset (the config's field defaults, and the default preset then) before the S3
# settings moved to `storage`: outputs written then keep skipping their done work (a run that writes no label maps:
# label maps are results those outputs lack).
FAST_FINGERPRINT = "7c0a8234eb15cec4"
NO_LABEL_MAPS = {"masks.label_maps": False}


def test_s3_settings_live_in_storage_and_leave_the_fingerprint_alone():
    config = load_config(
        overrides={"storage.s3_endpoint_url": "http://minio:9000", "storage.s3_region": "eu-west-1", **NO_LABEL_MAPS},
        preset="fast",
    )
    assert config.storage.s3_endpoint_url == "http://minio:9000" and config.storage.s3_region == "eu-west-1"
    assert config.storage.s3_max_attempts == 6
    assert config.fingerprint() == FAST_FINGERPRINT


def test_the_old_s3_spellings_still_work_with_a_warning_naming_the_new_field(tmp_path, caplog):
    path = tmp_path / "job.yaml"
    path.write_text("source:\n  uri: photos\n  s3_endpoint_url: http://minio:9000\n  s3_max_attempts: 3\n")
    with pytest.warns(DeprecationWarning) as warned:
        config = load_config(path, {"source.s3_region": "eu-west-1", **NO_LABEL_MAPS}, preset="fast")
    assert config.source.uri == "photos"
    assert (config.storage.s3_endpoint_url, config.storage.s3_region, config.storage.s3_max_attempts) == (
        "http://minio:9000",
        "eu-west-1",
        3,
    )
    messages = sorted(str(item.message) for item in warned)
    assert messages == [
        f"`source.{name}` is deprecated and will be removed in the next version: set `storage.{name}` instead"
        for name in ("s3_endpoint_url", "s3_max_attempts", "s3_region")
    ]
    assert sorted(r.getMessage() for r in caplog.records if r.name == "camray.config") == messages
    assert config.fingerprint() == FAST_FINGERPRINT
    assert "s3_endpoint_url" not in config.model_dump()["source"]  # what runs record is the new spelling


def test_an_old_and_a_new_spelling_that_differ_are_refused():
    with pytest.raises(ConfigError, match=r"`source.s3_region` is the old name of `storage.s3_region`"):
        load_config(overrides={"source.s3_region": "eu-west-1", "storage.s3_region": "us-east-1"})
    with pytest.warns(DeprecationWarning):  # the same value twice is no conflict
        load_config(overrides={"source.s3_region": "eu-west-1", "storage.s3_region": "eu-west-1"})


def test_the_old_s3_flags_parse_into_storage():
    from camray.cli import build_parser, overrides_from_args

    args = build_parser().parse_args(["--source.s3_max_attempts", "4", "--storage.s3_region", "eu-west-1"])
    with pytest.warns(DeprecationWarning, match="set `storage.s3_max_attempts` instead"):
        config = load_config(overrides=overrides_from_args(args))
    assert config.storage.s3_max_attempts == 4 and config.storage.s3_region == "eu-west-1"
    assert "source.s3_max_attempts" not in build_parser().format_help()  # read, no longer offered


def test_the_cam_methods_have_one_list():
    from typing import get_args

    from camray.cam.method_names import CAM_METHODS, GRADIENT_METHODS
    from camray.cam.methods import GRADIENT_MAPS
    from camray.config import CamConfig

    method = CamConfig.model_fields["method"].annotation
    assert tuple(arg for literal in get_args(method) for arg in get_args(literal)) == CAM_METHODS
    assert set(GRADIENT_MAPS) == set(GRADIENT_METHODS) < set(CAM_METHODS)
    for name in CAM_METHODS:
        CamConfig(method=name)
    with pytest.raises(ValueError, match="cam.method"):
        load_config(overrides={"cam.method": "gradcam++"})


def test_the_demo_without_its_data_packages_fails_fast_naming_the_extra(tmp_path):
    # The worker image goes without the `demo` extra; here its package is made unimportable for one process.
    code = "import sys; sys.modules['skimage'] = None; from camray.cli import main; sys.exit(main(['--output', 'out']))"
    ran = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "photos ship in scikit-image, not installed" in ran.stderr and "pip install 'camray[demo]'" in ran.stderr
    assert not (tmp_path / "out").exists()


def test_label_maps_fields_the_old_mask_switch_and_the_fingerprint(caplog):
    """`boxes.masks` is read as `masks.top1` with a warning, in its old place in the fingerprint; label maps enter
    the fingerprint when written; a band below the background is refused naming the field."""
    with pytest.warns(DeprecationWarning, match="`boxes.masks` is deprecated .* set `masks.top1` instead"):
        old = load_config(overrides={"boxes.masks": False, **NO_LABEL_MAPS}, preset="fast")
    assert old.masks.top1 is False and "masks" not in old.model_dump()["boxes"]
    assert old.fingerprint() != FAST_FINGERPRINT
    new = load_config(overrides={"masks.top1": False, **NO_LABEL_MAPS}, preset="fast")
    assert new.fingerprint() == old.fingerprint()
    fingerprints = {
        load_config(overrides=overrides, preset="fast").fingerprint()
        for overrides in ({}, {"masks.background": 0.6}, {"masks.refine": "crf"}, {"masks.ignore_below": 0.9})
    }
    assert len(fingerprints | {FAST_FINGERPRINT}) == 5
    balanced = load_config().masks
    assert (balanced.refine, balanced.background, balanced.label_maps) == ("crf", "auto", True)
    for bad, field in (({"masks.ignore_below": 0.5}, "masks"), ({"masks.background": "mean"}, "masks.background")):
        with pytest.raises(ConfigError, match=field):
            load_config(overrides=bad, preset="fast")
    assert load_config(overrides={"masks.ignore_below": 0.5}).masks.ignore_below == 0.5  # above an `auto` background


def test_the_classes_fields_leave_old_fingerprints_alone_and_labels_from_a_manifest_is_refused():
    base = JobConfig().fingerprint()
    assert (
        load_config(overrides={"cam.classes": "predicted", "model.head": "softmax"}, preset="fast").fingerprint()
        == base
    )
    changed = [
        {"cam.classes": "given"},
        {"cam.min_score": 0.3},
        {"model.head": "sigmoid"},
        {"model.labels": "names.txt"},
    ]
    assert len({load_config(overrides=o, preset="fast").fingerprint() for o in changed} | {base}) == 5
    with pytest.raises(ConfigError, match="source.labels_from"):
        load_config(overrides={"source.uri": "m.csv", "source.labels_from": "folder"})


def test_the_boxes_source_changes_the_fingerprints_of_the_runs_it_changes_and_needs_label_maps():
    """`boxes.source: auto` boxes label maps for given classes under the CRF, so their fingerprint moves; every
    run that it leaves on the maps keeps the fingerprint it had before the field."""
    for preset, classes in (("fast", "given"), ("balanced", "predicted"), ("accurate", "both")):
        auto = load_config(overrides={"cam.classes": classes}, preset=preset)
        maps = load_config(overrides={"cam.classes": classes, "boxes.source": "maps"}, preset=preset)
        assert not auto.boxes_from_label_maps() and auto.fingerprint() == maps.fingerprint()
    given = load_config(overrides={"cam.classes": "given"})
    assert given.boxes_from_label_maps()
    assert given.fingerprint() != load_config(overrides={"cam.classes": "given", "boxes.source": "maps"}).fingerprint()
    assert (
        given.fingerprint()
        == load_config(overrides={"cam.classes": "given", "boxes.source": "label_maps"}).fingerprint()
    )
    assert load_config(overrides={"model.head": "sigmoid"}).boxes_from_label_maps()
    with pytest.raises(ConfigError, match=r"`boxes.source` is `label_maps`, but `masks.label_maps` is false"):
        load_config(overrides={"boxes.source": "label_maps", "masks.label_maps": False})
    with pytest.raises(ConfigError, match="boxes.source"):
        load_config(overrides={"boxes.source": "contours"})
