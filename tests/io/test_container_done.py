"""Skip-done for containers, against an output's tables written with the real schemas: which containers are
done, which are read again for some samples or whole, and what a resumed attempt leaves out."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from camray.io.container_done import ContainerHistory, Skipped, to_read
from camray.io.container_staging import prior_rows, read_tallies, write_tally
from camray.io.layout import staged_file_name, tallies_uri, tally_file_name
from camray.io.schema import ERRORS, RESULTS, RUNS
from camray.io.sources import S3Settings, join_uri

MODEL, SETTINGS = "efficientnet_lite0", "f00d"


def _rows(schema: pa.Schema, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{**dict.fromkeys(schema.names), **row} for row in rows], schema=schema)


def _run(output, run_id: str, day: int, status: str = "succeeded", model: str = MODEL) -> None:
    row = {
        "run_id": run_id,
        "status": status,
        "started_at": datetime(2026, 11, day, tzinfo=UTC),
        "model": model,
        "config_fingerprint": SETTINGS,
    }
    (output / "runs").mkdir(parents=True, exist_ok=True)
    pq.write_table(_rows(RUNS, [row]), output / "runs" / f"{run_id}.parquet")


def _sample(container: str, key: str | None, run_id: str, version: str = "v1", model: str = MODEL) -> dict:
    return {
        "image_uri": container if key is None else f"{container}#{key}",
        "container_uri": container,
        "source_version": version,
        "run_id": run_id,
        "model": model,
        "config_fingerprint": SETTINGS,
    }


def _write(output, table: str, run_id: str, rows: list[dict]) -> None:
    schema = RESULTS if table == "results" else ERRORS
    (output / table).mkdir(parents=True, exist_ok=True)
    kept = [{name: value for name, value in row.items() if name in schema.names} for row in rows]
    pq.write_table(_rows(schema, kept), output / table / f"{run_id}-a01-00000.parquet")


@pytest.fixture
def output(tmp_path):
    out = tmp_path / "out"
    _run(out, "r1", 1)
    _run(out, "r2", 2)
    _run(out, "r3", 3, status="failed")
    _run(out, "r4", 4, model="resnet50")
    _write(
        out,
        "results",
        "r1",
        [
            _sample("A", "0", "r1"),
            _sample("A", "1", "r1"),
            _sample("B", "0", "r1"),
            _sample("C", "0", "r1"),
            _sample("D", "0", "r1", version="v0"),
            _sample("E", "0", "r1"),
        ],
    )
    _write(out, "errors", "r1", [_sample("B", "1", "r1"), _sample("C", "1", "r1"), _sample("E", None, "r1")])
    _write(out, "errors", "r1b", [_sample("F", None, "r1")])
    _write(out, "results", "r2", [_sample("C", "1", "r2"), _sample("F", "0", "r2"), _sample("F", "1", "r2")])
    _write(out, "results", "r3", [_sample("H", "0", "r3")])
    _write(out, "results", "r4", [_sample("I", "0", "r4", model="resnet50")])
    return out


def _listing(names: str) -> list[pa.Table]:
    uris = list(names)
    return [pa.table({"uri": uris, "size": [100] * len(uris), "version": ["v1"] * len(uris)})]


def _decisions(tables) -> dict[str, tuple[list | None, list]]:
    return {row["uri"]: (row["only_keys"], row["skip_keys"]) for table in tables for row in table.to_pylist()}


def test_done_partly_done_and_not_done_containers(output):
    skipped = Skipped()
    history = ContainerHistory(str(output), MODEL, SETTINGS, S3Settings())
    decided = _decisions(to_read(_listing("ABCDEFGHI"), history, None, None, skipped, out_rows=2))
    assert decided == {
        "B": (["1"], []),  # one sample failed: read for it alone
        "D": (None, []),  # rewritten since (another version): read whole
        "E": ([], []),  # the shard's own failure is as new as its samples: read again for it
        "G": (None, []),  # never read
        "H": (None, []),  # read by a run that failed
        "I": (None, []),  # read with another model
    }
    # A: every sample has a result; C: its failure was fixed by a later run; F: its own failure is older than
    # the samples a later run read.
    assert (skipped.done, skipped.staged) == (3, 0)


def _stage(output, run_id: str, table: str, name: str, rows: list[dict]) -> None:
    schema = RESULTS if table == "results" else ERRORS
    folder = output / "_staging" / run_id / table
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(_rows(schema, [{k: v for k, v in row.items() if k in schema.names} for row in rows]), folder / name)


def test_a_resumed_attempt_leaves_out_what_earlier_attempts_staged(output):
    run_id = "r9"
    _stage(
        output,
        run_id,
        "results",
        staged_file_name(run_id, 1, 0),
        [_sample("G", "0", run_id), _sample("J", "0", run_id)],
    )
    _stage(output, run_id, "errors", staged_file_name(run_id, 1, 1), [_sample("K", None, run_id)])
    _stage(output, run_id, "results", staged_file_name(run_id, 2, 0), [_sample("J", "1", run_id)])
    tallies = tallies_uri(str(output), run_id)
    write_tally(join_uri(tallies, tally_file_name(1, 0)), [("G", 2), ("J", 2), ("K", 1)], 1, S3Settings())
    write_tally(join_uri(tallies, tally_file_name(2, 3)), [("J", 1)], 2, S3Settings())

    prior = prior_rows(str(output), run_id, S3Settings())
    earlier = read_tallies(tallies, S3Settings(), before=3)
    assert sorted(earlier.column("index").to_pylist()) == [0, 0, 0, 3]
    skipped = Skipped()
    decided = _decisions(to_read(_listing("GJKL"), None, prior, earlier, skipped))
    # G: its read ended but one of its two rows was never staged; J: its last read (attempt 2) had its one row
    # staged; K: the shard's own failure was staged; L: untouched.
    assert decided == {"G": (None, ["0"]), "L": (None, [])}
    assert (skipped.done, skipped.staged) == (0, 2)
