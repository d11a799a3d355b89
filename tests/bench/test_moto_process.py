"""Reading moto's recorder file, as the server's threads leave it."""

from __future__ import annotations

import json

from camray.bench.moto_process import recorder_entries


def test_records_are_read_whatever_lines_the_threads_left_them_on():
    large = {"method": "PUT", "url": "/bucket/part-00006.parquet", "body": "x" * 110_000}
    small = {"method": "GET", "url": "/bucket/?list-type=2", "body": ""}
    # A record larger than the file's buffer is written at once and its newline later, so another thread's record
    # can come between them: two records on one line, then both newlines.
    text = json.dumps(small) + "\n" + json.dumps(large) + json.dumps(small) + "\n\n" + json.dumps(large) + "\n"
    assert list(recorder_entries(text)) == [small, large, small, large]
    assert list(recorder_entries("")) == []
