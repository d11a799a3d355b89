"""`camray optimize`: a Delta output's small nightly files compacted into few, read back with the same current rows
in row groups of bounded size; what no current version names vacuumed; the lease waited for, or refused."""

from __future__ import annotations

import logging
import os
import threading
import time

import pyarrow.parquet as pq
import pytest
from readers import delta_rows

from camray.bench.history import fabricate_history
from camray.cli import main_camray
from camray.io import optimize as optimize_module
from camray.io.layout import staged_file_name
from camray.io.optimize import optimize
from camray.io.output import Output


def _current(out) -> list[tuple[str, str]]:
    rows = delta_rows(out, "results", ["image_uri", "source_version"]).to_pylist()
    return sorted((row["image_uri"], row["source_version"]) for row in rows)


def test_small_files_are_compacted_and_what_no_version_names_vacuumed_under_the_lease(
    tmp_path, monkeypatch, caplog, capsys
):
    out = tmp_path / "out"
    fabricate_history(out, 3000, [], "m", "f", rows_per_file=100, runs=10)  # ten nights, thirty small files
    before = _current(out)
    # A crashed run's staged file, two days old, that no run resumed.
    crashed = out / "results" / staged_file_name("20251130T000000Z-crashd", 1, 0)
    crashed.write_bytes((out / "results" / sorted(p.name for p in (out / "results").glob("*.parquet"))[0]).read_bytes())
    os.utime(crashed, (time.time() - 2 * 86400,) * 2)
    monkeypatch.setattr(optimize_module, "ROW_GROUP_ROWS", 512)

    holder = Output(str(out)).lease("20261207T000000Z-night", 60)
    holder.acquire()
    try:
        assert main_camray(["optimize", "--output", str(out), "--wait-for-lease", "0"]) == 3
        assert "leased by run 20261207T000000Z-night" in capsys.readouterr().err
        done: dict = {}
        waiting = threading.Thread(target=lambda: done.update(upkeep=optimize(Output(str(out)), retention_hours=0)))
        with caplog.at_level(logging.INFO, logger="camray"):
            waiting.start()
            deadline = time.monotonic() + 60
            while not any("waiting for the lease" in record.message for record in caplog.records):
                assert time.monotonic() < deadline and waiting.is_alive()
                time.sleep(0.1)
            assert "upkeep" not in done  # it waits while the night holds the lease
    finally:
        holder.release()
    waiting.join(timeout=120)
    upkeep = done["upkeep"]

    assert (upkeep.files_before["results"], upkeep.files_after["results"]) == (30, 1)
    assert _current(out) == before
    (compacted,) = Output(str(out)).files("results")
    metadata = pq.read_metadata(compacted)
    assert (
        metadata.num_rows == 3000 and max(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)) <= 512
    )
    assert not crashed.exists()  # no commit named it: vacuumed
    assert sorted(p.name for p in (out / "results").glob("*.parquet")) == [compacted.rsplit("/", 1)[-1]]
    assert upkeep.vacuumed["results"] == 31
    with pytest.raises(Exception):  # noqa: B017 - the versions before the compaction lost their files
        delta_rows(out, "results", version=1)
    assert not (out / "_lease.json").exists()


def test_a_parquet_output_is_told_to_migrate_first(tmp_path, capsys):
    fabricate_history(tmp_path / "out", 10, [], "m", "f", runs=1, table_format="parquet")
    assert main_camray(["optimize", "--output", str(tmp_path / "out")]) == 2
    assert "camray migrate --output" in capsys.readouterr().err
