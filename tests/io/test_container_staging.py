"""Containers staged as listing files for the read tasks, and the accounting by the tasks' tallies."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from camray.io import container_staging
from camray.io.container_done import TO_READ
from camray.io.container_staging import PLANNING_SAMPLE_BYTES, stage, write_tally
from camray.io.layout import listing_file_name
from camray.io.sources import S3Settings

LOCAL = S3Settings()


def _entries(sizes: list[int]) -> list[pa.Table]:
    rows = [
        {"uri": f"s{index}.tar", "size": size, "version": "v", "only_keys": None, "skip_keys": []}
        for index, size in enumerate(sizes)
    ]
    return [pa.Table.from_pylist(rows[:3], schema=TO_READ), pa.Table.from_pylist(rows[3:], schema=TO_READ)]


def test_listing_files_hold_whole_containers_up_to_a_task_of_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(container_staging, "TASK_BYTES", 100)
    monkeypatch.setattr(container_staging, "UNKNOWN_SIZE_BYTES", 60)
    staged = stage(
        str(tmp_path / "listing"),
        str(tmp_path / "tallies"),
        1,
        _entries([40, 40, 500, 10, -1, 30, 30]),
        LOCAL,
        "webdataset",
    )
    files = [
        pq.read_table(tmp_path / "listing" / listing_file_name(index)).column("uri").to_pylist()
        for index in range(staged.files)
    ]
    # 40 + 40 + 500 passes the bound at the large one; a shard of unknown size counts for 60.
    assert files == [["s0.tar", "s1.tar", "s2.tar"], ["s3.tar", "s4.tar", "s5.tar"], ["s6.tar"]]
    assert (staged.rows, staged.bytes) == (7, 650)
    assert staged.images == 7, "at least one sample a container"
    big = stage(
        str(tmp_path / "big"), str(tmp_path / "tallies"), 1, _entries([PLANNING_SAMPLE_BYTES * 40]), LOCAL, "webdataset"
    )
    assert big.images == 40


def test_an_attempt_is_accounted_by_its_read_tasks_tallies(tmp_path):
    staged = stage(str(tmp_path / "listing"), str(tmp_path / "tallies"), 2, _entries([10] * 4), LOCAL, "parquet")
    staged.files = 2  # as if the containers had filled two read tasks
    write_tally(staged.tally_uri(0), [("s0.tar", 5), ("s1.tar", 0)], 2, LOCAL)
    write_tally(str(tmp_path / "tallies" / "a01-00001.parquet"), [("s2.tar", 7)], 1, LOCAL)  # an earlier attempt's
    expected, why = staged.expected_rows(LOCAL)
    assert expected is None and why.startswith("1 of 2 read tasks left no tally")
    write_tally(staged.tally_uri(1), [("s2.tar", 3), ("s3.tar", 1)], 2, LOCAL)
    assert staged.expected_rows(LOCAL) == (9, "")
