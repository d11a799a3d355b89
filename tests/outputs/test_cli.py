"""The `camray` console script: its declaration, every verb's help, usage errors, and a light start-up."""

from __future__ import annotations

import json
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
    assert "missing.yaml does not exist" in capsys.readouterr().err


def test_tools_start_without_ray_or_torch_and_fail_in_one_line(tmp_path):
    """`camray runs | report | query | export | optimize` load neither Ray nor torch (seconds of start-up each
    time)."""
    code = (
        "import sys; from camray.cli import main_camray; status = main_camray(sys.argv[1:]); "
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'torch', 'torchvision'}); "
        "print(loaded, file=sys.stderr); sys.exit(status)"
    )
    for verb in (["runs"], ["report", "--dest", str(tmp_path)], ["query", "SELECT 1"], ["optimize"]):
        done = subprocess.run(
            [sys.executable, "-c", code, *verb, "--output", str(tmp_path / "absent")],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        lines = done.stderr.splitlines()
        assert done.returncode == 1 and lines[-1] == "[]", done.stderr
        assert lines[0].startswith(f"camray {verb[0]}: error:") and "has no runs table" in lines[0]
        assert len(lines) == 2  # the one error line, then this test's own print


def _succeeded_run(out: Path, run_id: str) -> None:
    from datetime import UTC, datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    from camray.io.schema import RUNS

    (out / "runs").mkdir(parents=True, exist_ok=True)
    row = dict.fromkeys(RUNS.names) | {"run_id": run_id, "status": "succeeded", "started_at": datetime.now(UTC)}
    pq.write_table(pa.Table.from_pylist([row], schema=RUNS), out / "runs" / f"{run_id}.parquet")


NOT_PARQUET = b"written by something else, not Parquet" * 4


@pytest.mark.parametrize("corrupt", ["runs", "results"])
def test_a_run_failing_on_a_pyarrow_error_exits_1_with_that_error(corrupt, tmp_path, photos, capsys):
    """pyarrow's `ArrowInvalid` is a `ValueError`, and a run that meets one fails (1), naming it: it is no bad
    config (2). A corrupt runs file stops the run where it reads which runs succeeded, a corrupt results file where
    it skips the work they did; either way under the lease, and its runs row records the failure."""
    import pyarrow.parquet as pq

    from camray.cli import main

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "cat.png").write_bytes(photos["chelsea.png"])
    out = tmp_path / "out"
    _succeeded_run(out, "earlier-run")
    broken = out / corrupt / "earlier-run-a01-00000.parquet"
    broken.parent.mkdir(exist_ok=True)
    broken.write_bytes(NOT_PARQUET)

    capsys.readouterr()
    status = main(["--input", str(inputs), "--output", str(out)])
    printed = capsys.readouterr()
    assert status == 1, printed
    # The done work is anti-joined in DuckDB, which reports the pyarrow error of the stream it reads in its own
    # (a message of several lines, pyarrow's traceback included).
    raised_by = {"runs": "ArrowInvalid", "results": "InvalidInputException"}[corrupt]
    last = printed.err[printed.err.rindex(f"camray: run failed: {raised_by}: ") :]
    assert broken.name in last and "magic bytes" in last
    assert "camray:" not in printed.out
    assert not (out / "_lease.json").exists()
    seeded = {"earlier-run.parquet", broken.name}
    [row] = [pq.read_table(path).to_pylist()[0] for path in (out / "runs").iterdir() if path.name not in seeded]
    assert row["status"] == "failed" and row["attempt"] == 1
    assert row["message"].startswith(f"{raised_by}: ") and broken.name in row["message"]


def test_tools_exit_2_only_for_what_the_user_asked_wrongly(tmp_path, capsys):
    out = tmp_path / "out"
    _succeeded_run(out, "earlier-run")

    def query(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        status = main_camray(["query", "--output", str(out), *argv])
        return status, capsys.readouterr().err

    assert query()[0] == 2  # no SQL
    assert query("SELEC 1")[0] == 2
    assert query("SELECT * FROM nowhere")[0] == 2
    status, err = query("SELECT CAST('one' AS INTEGER)")  # well-formed: the data makes it fail
    assert status == 1 and "Conversion Error" in err
    assert query("SELECT count(*) FROM runs")[0] == 0
    (out / "results").mkdir()
    (out / "results" / "earlier-run-a01-00000.parquet").write_bytes(NOT_PARQUET)
    status, err = query("SELECT count(*) FROM results")
    # Ray's raylet may log to this process's stderr too (the shared head's disk monitor): camray's line is one line.
    (line,) = [line for line in err.splitlines() if line.startswith("camray query: error:")]
    assert status == 1 and "magic bytes" in line


def test_query_json_is_written_row_by_row_as_the_same_text_as_one_dump(tmp_path):
    import pyarrow as pa

    from camray.cli import _json_value, _write_json

    table = pa.table({"a": [1, 2, 3], "nested": [{"x": [1, 2]}, None, {"x": []}], "text": ["q\nr", "s", ""]})
    _write_json(table.to_batches(max_chunksize=2), str(tmp_path / "rows.json"))
    assert (tmp_path / "rows.json").read_text() == json.dumps(table.to_pylist(), default=_json_value, indent=1) + "\n"
    _write_json(table.slice(0, 0).to_batches(), str(tmp_path / "none.json"))
    assert json.loads((tmp_path / "none.json").read_text()) == []
