"""Skip-done for containers, against an output's tables written with the real schemas: which containers are
done, which are read again for some samples or whole, and what a resumed attempt leaves out. The same runs make a
Delta output (each run committed as a run commits, superseding what it read again) and a Parquet output (every
succeeded run's rows kept): both give the same decisions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from outputs_made import runs_row

from camray.io.container_done import ContainerHistory, Skipped, to_read
from camray.io.container_staging import prior_rows, read_tallies, write_tally
from camray.io.layout import staged_file_name, tallies_uri, tally_file_name
from camray.io.output import Output
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


def _table(table: str, rows: list[dict]) -> pa.Table:
    schema = RESULTS if table == "results" else ERRORS
    return _rows(schema, [{name: value for name, value in row.items() if name in schema.names} for row in rows])


# What each run wrote, in run order: (run, table, rows), a run's several files in a row. r3 failed: its rows never
# became current.
WRITTEN = [
    ("r1", "results", [_sample(c, k, "r1", **v) for c, k, v in [("A", "0", {}), ("A", "1", {}), ("B", "0", {})]]),
    ("r1", "results", [_sample("C", "0", "r1"), _sample("D", "0", "r1", version="v0"), _sample("E", "0", "r1")]),
    ("r1", "errors", [_sample("B", "1", "r1"), _sample("C", "1", "r1"), _sample("E", None, "r1")]),
    ("r1", "errors", [_sample("F", None, "r1")]),
    ("r2", "results", [_sample("C", "1", "r2"), _sample("F", "0", "r2"), _sample("F", "1", "r2")]),
    ("r3", "results", [_sample("H", "0", "r3")]),
    ("r4", "results", [_sample("I", "0", "r4", model="resnet50")]),
]


@pytest.fixture(params=["delta", "parquet"])
def output(request, tmp_path):
    out = tmp_path / "out"
    days = {"r1": (1, "succeeded", MODEL), "r2": (2, "succeeded", MODEL), "r3": (3, "failed", MODEL)}
    days["r4"] = (4, "succeeded", "resnet50")
    if request.param == "parquet":
        for run_id, (number, status, model) in days.items():
            _run(out, run_id, number, status=status, model=model)
        for index, (run_id, table, rows) in enumerate(WRITTEN):
            (out / table).mkdir(parents=True, exist_ok=True)
            pq.write_table(_table(table, rows), out / table / staged_file_name(run_id, 1, index))
        return Output(str(out))
    made = Output(str(out))
    made.format.prepare()
    for run_id, (number, status, model) in days.items():
        for index, (writer, table, rows) in enumerate(WRITTEN):
            if writer == run_id:
                pq.write_table(_table(table, rows), out / table / staged_file_name(run_id, 1, index))
        if status == "succeeded":
            made.format.commit(run_id, 1)
        made.format.append_runs_row(
            runs_row(run_id, status, started_at=datetime(2026, 11, number, tzinfo=UTC), model=model)
            | {"config_fingerprint": SETTINGS}
        )
    made.refresh()
    return made


def test_a_delta_output_holds_one_current_row_per_sample_and_container(tmp_path):
    """r2 read C and F again: C's failed sample's error and F's own error left the current version."""
    out = tmp_path / "out"
    made = Output(str(out))
    made.format.prepare()
    for index, (run_id, table, rows) in enumerate(WRITTEN[:5]):
        pq.write_table(_table(table, rows), out / table / staged_file_name(run_id, 1, index))
    made.format.commit("r1", 1)
    made.format.commit("r2", 1)
    errors = made.scan("errors", ["image_uri", "run_id"]).read_all().to_pylist()
    assert sorted(row["image_uri"] for row in errors) == ["B#1", "E"]
    results = sorted((row["image_uri"], row["run_id"]) for row in made.scan("results").read_all().to_pylist())
    assert [uri for uri, _ in results] == ["A#0", "A#1", "B#0", "C#0", "C#1", "D#0", "E#0", "F#0", "F#1"]


def _listing(names: str) -> list[pa.Table]:
    uris = list(names)
    return [pa.table({"uri": uris, "size": [100] * len(uris), "version": ["v1"] * len(uris)})]


def _decisions(tables) -> dict[str, tuple[list | None, list]]:
    return {row["uri"]: (row["only_keys"], row["skip_keys"]) for table in tables for row in table.to_pylist()}


def test_done_partly_done_and_not_done_containers(output):
    skipped = Skipped()
    history = ContainerHistory(output, MODEL, SETTINGS)
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


def _stage(output: Output, run_id: str, table: str, name: str, rows: list[dict]) -> None:
    """A file of the run's rows where its output's format stages them."""
    folder = Path(output.format.staging_uri(table, run_id))
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(_table(table, rows), folder / name)


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
    tallies = tallies_uri(output.uri, run_id)
    write_tally(join_uri(tallies, tally_file_name(1, 0)), [("G", 2), ("J", 2), ("K", 1)], 1, S3Settings())
    write_tally(join_uri(tallies, tally_file_name(2, 3)), [("J", 1)], 2, S3Settings())

    prior = prior_rows(output, run_id)
    earlier = read_tallies(tallies, S3Settings(), before=3)
    assert sorted(earlier.column("index").to_pylist()) == [0, 0, 0, 3]
    skipped = Skipped()
    decided = _decisions(to_read(_listing("GJKL"), None, prior, earlier, skipped))
    # G: its read ended but one of its two rows was never staged; J: its last read (attempt 2) had its one row
    # staged; K: the shard's own failure was staged; L: untouched.
    assert decided == {"G": (None, ["0"]), "L": (None, [])}
    assert (skipped.done, skipped.staged) == (0, 2)
