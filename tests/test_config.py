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
        stdout, stderr = process.communicate(timeout=120)
        finished.append(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))
    return finished


def test_cli_fails_before_any_work(tmp_path):
    out = str(tmp_path / "out")
    bad, unknown, cam_on_vgg, refine_unknown = _run_clis(
        ("--cam.top_k", "0", "--output", out),
        ("--model", "resnet5", "--output", out),
        ("--model", "vgg16", "--cam.method", "cam", "--output", out),
        ("--model", "vit_b_16", "--preset", "accurate", "--output", out),
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "cam.top_k" in bad.stdout
    assert unknown.returncode == 2 and "`model.name` 'resnet5'" in unknown.stdout
    assert cam_on_vgg.returncode == 2 and "`cam.method` is `cam`" in cam_on_vgg.stdout
    # A ViT has no block finer than its token grid for the tiles' `layer` fusion.
    assert refine_unknown.returncode == 2 and "need `cam.refine_layer` for 'vit_b_16'" in refine_unknown.stdout
    assert not (tmp_path / "out").exists()
    assert "ray" not in (bad.stderr + unknown.stderr).lower()
