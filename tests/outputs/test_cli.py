"""The `camray` console script: its declaration, every verb's help, usage errors, and a light start-up."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from camray.cli import main_camray

REPO = Path(__file__).resolve().parents[2]
VERBS = (["runs"], ["report"], ["query"], ["export", "coco"], ["export", "yolo"])


def test_console_script_is_declared():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["camray"] == "camray.cli:main_camray"


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_has_help_with_an_example(verb, capsys):
    with pytest.raises(SystemExit) as exited:
        main_camray([*verb, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert f"  camray {' '.join(verb)} --output" in text and "exit status:" in text and "--s3-endpoint-url" in text


def test_top_level_help_lists_the_verbs_and_run_is_the_job(capsys):
    with pytest.raises(SystemExit):
        main_camray(["--help"])
    text = capsys.readouterr().out
    assert all(verb in text for verb in ("run", "runs", "report", "query", "export"))
    with pytest.raises(SystemExit):
        main_camray(["run", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: camray run") and "--cam.top_k VALUE" in text
    assert "example:\n  camray run --input s3://" in text and "exit status:" in text


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main_camray([])
    assert exited.value.code == 2
    assert main_camray(["run", "--config", str(tmp_path / "missing.yaml")]) == 2  # the job's own config error
    assert "missing.yaml does not exist" in capsys.readouterr().out


def test_tools_start_without_ray_or_torch_and_fail_in_one_line(tmp_path):
    """`camray runs | report | query | export` load neither Ray nor torch (seconds of start-up each time)."""
    code = (
        "import sys; from camray.cli import main_camray; status = main_camray(sys.argv[1:]); "
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'torch', 'torchvision'}); "
        "print(loaded, file=sys.stderr); sys.exit(status)"
    )
    for verb in (["runs"], ["report", "--dest", str(tmp_path)], ["query", "SELECT 1"]):
        done = subprocess.run(
            [sys.executable, "-c", code, *verb, "--output", str(tmp_path / "absent")],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        lines = done.stderr.splitlines()
        assert done.returncode == 1 and lines[-1] == "[]", done.stderr
        assert lines[0].startswith(f"camray {verb[0]}: error:") and "no runs/ table" in lines[0]
        assert len(lines) == 2  # the one error line, then this test's own print
