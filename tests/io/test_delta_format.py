"""A Delta output's commit, on real Delta tables read back by `deltalake`: a run's rows current at once, the rows it
supersedes gone from the current version and kept by time travel, and a commit that died between its two tables
finished by the resumed attempt, adding nothing twice."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from readers import delta_rows

from camray.io import delta_format
from camray.io.layout import staged_file_name
from camray.io.output import Output
from camray.io.run_keys import DuplicateRows
from camray.io.schema import ERRORS, RESULTS


def _stage(out, table: str, run_id: str, attempt: int, task: int, uris: list[str], version: str = "v1") -> None:
    """A write task's file of `run_id`, as the sink stages it in a Delta output: in the table's own folder."""
    schema = RESULTS if table == "results" else ERRORS
    rows = [
        dict.fromkeys(schema.names)
        | {"image_uri": uri, "source_version": version, "run_id": run_id}
        | ({"width": 1, "model": "m"} if table == "results" else {"stage": "decode", "error_type": "E"})
        for uri in uris
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / table / staged_file_name(run_id, attempt, task))


def _current(out, table: str) -> list[tuple[str, str]]:
    rows = delta_rows(out, table, ["image_uri", "run_id"]).to_pylist()
    return sorted((row["image_uri"], row["run_id"]) for row in rows)


@pytest.fixture
def output(tmp_path) -> Output:
    made = Output(str(tmp_path))
    made.format.prepare()
    return made


def test_a_rewritten_image_has_one_current_row_and_the_older_one_by_time_travel(output, tmp_path):
    _stage(tmp_path, "results", "r1", 1, 0, ["a", "b", "c"])
    _stage(tmp_path, "results", "r1", 1, 1, ["d"])
    _stage(tmp_path, "errors", "r1", 1, 2, ["e", "f"])
    committed = ["errors/r1-a01-00002.parquet", "results/r1-a01-00000.parquet", "results/r1-a01-00001.parquet"]
    assert output.format.commit("r1", 1) == committed
    first = DeltaTable(str(tmp_path / "results")).version()
    # r2: b rewritten, e now read fine, f fails again.
    _stage(tmp_path, "results", "r2", 1, 0, ["b", "e"], version="v2")
    _stage(tmp_path, "errors", "r2", 1, 1, ["f"])
    output.format.commit("r2", 1)

    assert _current(tmp_path, "results") == [("a", "r1"), ("b", "r2"), ("c", "r1"), ("d", "r1"), ("e", "r2")]
    assert _current(tmp_path, "errors") == [("f", "r2")]
    older = delta_rows(tmp_path, "results", ["image_uri", "run_id", "source_version"], version=first).to_pylist()
    assert {row["image_uri"]: (row["run_id"], row["source_version"]) for row in older}["b"] == ("r1", "v1")
    # One log entry a table and run, naming the run; r1's first file rewritten without b, its second kept whole.
    log = (tmp_path / "results" / "_delta_log" / f"{first + 1:020d}.json").read_text().splitlines()
    actions = [json.loads(line) for line in log]
    added = sorted(a["add"]["path"] for a in actions if "add" in a)
    removed = [a["remove"]["path"] for a in actions if "remove" in a]
    assert added == ["r2-a01-00000.parquet", "rewrite-r2-a01-00000.parquet"] and removed == ["r1-a01-00000.parquet"]
    (info,) = [a["commitInfo"] for a in actions if "commitInfo" in a]
    assert info["camray.run_id"] == "r2"
    stats = json.loads(next(a["add"]["stats"] for a in actions if "add" in a))
    assert stats["numRecords"] == 2 and stats["minValues"]["run_id"] == stats["maxValues"]["run_id"]


def test_a_commit_that_died_between_its_tables_is_finished_once_by_the_resumed_attempt(output, tmp_path, monkeypatch):
    """r1 turns r0's result `p` into an error and r0's error `q` into a result; its driver dies after the results'
    commit, before the errors'. Its second attempt reads the committed rows back from the table, stages one more
    file, and commits what is left: the errors' entry, and its new file, each once."""
    _stage(tmp_path, "results", "r0", 1, 0, ["p"])
    _stage(tmp_path, "errors", "r0", 1, 1, ["q"])
    output.format.commit("r0", 1)
    _stage(tmp_path, "results", "r1", 1, 0, ["a", "q"])
    _stage(tmp_path, "errors", "r1", 1, 1, ["p", "b"])
    committing = delta_format.DeltaFormat._commit_actions

    def results_only(self, table, *args, **kwargs):
        if table == "errors":
            raise OSError("the driver died here")
        return committing(self, table, *args, **kwargs)

    monkeypatch.setattr(delta_format.DeltaFormat, "_commit_actions", results_only)
    with pytest.raises(OSError, match="died"):
        output.format.commit("r1", 1)
    monkeypatch.undo()
    assert _current(tmp_path, "results") == [("a", "r1"), ("q", "r1")]  # the results' entry is in: r0's `p` gone
    assert _current(tmp_path, "errors") == [("q", "r0")]  # the errors' is not

    prior = [(part.table, part.attempt, *part.rows.column("image_uri").to_pylist()) for part in _run_rows(output)]
    assert sorted(prior) == [("errors", 1, "p", "b"), ("results", 1, "a", "q")]
    _stage(tmp_path, "results", "r1", 2, 0, ["c"])
    output.format.commit("r1", 2)

    assert _current(tmp_path, "results") == [("a", "r1"), ("c", "r1"), ("q", "r1")]
    assert _current(tmp_path, "errors") == [("b", "r1"), ("p", "r1")]
    results, errors = DeltaTable(str(tmp_path / "results")), DeltaTable(str(tmp_path / "errors"))
    assert (results.transaction_version("camray:r1"), errors.transaction_version("camray:r1")) == (2, 2)
    output.format.commit("r1", 2)  # again, as after a crash past the commit: nothing is added twice
    assert (DeltaTable(str(tmp_path / "results")).version(), DeltaTable(str(tmp_path / "errors")).version()) == (
        results.version(),
        errors.version(),
    )


def _run_rows(output: Output):
    return output.format.run_rows("r1", {"results": ["image_uri"], "errors": ["image_uri"]})


def test_an_input_twice_among_a_runs_rows_commits_nothing(output, tmp_path):
    _stage(tmp_path, "results", "r1", 1, 0, ["a", "b"])
    _stage(tmp_path, "errors", "r1", 1, 1, ["b"])
    with pytest.raises(DuplicateRows, match=r"run r1 holds 1 duplicate rows \(for example \['b'\]\)"):
        output.format.commit("r1", 1)
    assert delta_rows(tmp_path, "results").num_rows == delta_rows(tmp_path, "errors").num_rows == 0
