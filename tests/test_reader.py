"""A manifest entry the readers cannot serve is that image's error row (stage `read`), never the run's crash; a
fault of camray's own reading code is not an image's error.

Unreadable local paths here are ones no user can read, root included (the tests run as root, which reads a
`chmod 000` file): a directory, a dangling symlink, a path inside a missing folder, a FIFO (opening it would
block) and a character device (`/dev/zero` would never end)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from camray.reader import check_readable, read_decode_batch

PHOTOS = ("chelsea.png", "grace_hopper.jpg")


def _entries(tmp_path: Path, photos: dict[str, bytes]) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Good photos and bad entries; for each bad one, the error type and a fragment of its message."""
    good = []
    for name in PHOTOS:
        (tmp_path / name).write_bytes(photos[name])
        good.append(str(tmp_path / name))
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    bad = {
        "http://example.com/cat.jpg": ("ValueError", "unsupported scheme `http://`"),
        "gs://bucket/cat.jpg": ("ValueError", "unsupported scheme `gs://`"),
        "S3://bucket/cat.jpg": ("ValueError", "unsupported scheme `S3://`"),
        str(tmp_path / "missing.jpg"): ("FileNotFoundError", "No such file"),
        str(tmp_path / "no-such-folder" / "cat.jpg"): ("FileNotFoundError", "No such file"),
        str(tmp_path / "dangling.jpg"): ("FileNotFoundError", "No such file"),
        str(tmp_path / "folder.jpg"): ("IsADirectoryError", "is a directory"),
        f"file://{tmp_path / 'folder.jpg'}": ("IsADirectoryError", "is a directory"),
        str(tmp_path / "pipe.jpg"): ("ValueError", "not a regular file"),
        "/dev/zero": ("ValueError", "not a regular file"),
    }
    return good, bad


def test_check_readable(tmp_path, photos):
    good, bad = _entries(tmp_path, photos)
    for uri in [*good, f"file://{good[0]}", "s3://bucket/key.jpg"]:
        check_readable(uri)
    for uri, (error_type, fragment) in bad.items():
        with pytest.raises((OSError, ValueError)) as info:
            check_readable(uri)
        assert type(info.value).__name__ == error_type and fragment in str(info.value), uri


def test_read_stage_turns_bad_entries_into_error_columns(tmp_path, photos):
    good, bad = _entries(tmp_path, photos)
    uris = [*good, *bad]
    out = read_decode_batch(
        {"uri": np.array(uris, dtype=object), "version": np.full(len(uris), "", dtype=object)},
        input_size=64,
        policy="letterbox",
        s3={},
        limits={},
    )
    stages = dict(zip(uris, out["error_stage"], strict=True))
    assert [stages[uri] for uri in good] == ["", ""]
    assert out["width"][0] == 451 and out["pixels"][0].any()
    for i, uri in enumerate(uris[len(good) :], start=len(good)):
        error_type, fragment = bad[uri]
        assert (out["error_stage"][i], out["error_type"][i]) == ("read", error_type), uri
        assert fragment in out["error_message"][i], uri


def test_a_fault_in_camray_s_own_reading_code_fails_the_task(tmp_path, photos, monkeypatch):
    """Only what the store or the file says of one input is that input's error row: a bug of camray's in reading
    is the same for every image, and raises."""
    from camray.io.sources import ByteReader

    good, _ = _entries(tmp_path, photos)

    def broken(self, uri):
        raise AttributeError("a bug of camray's")

    monkeypatch.setattr(ByteReader, "read", broken)
    batch = {"uri": np.array(good, dtype=object), "version": np.full(len(good), "", dtype=object)}
    with pytest.raises(AttributeError, match="a bug of camray's"):
        read_decode_batch(batch, input_size=64, policy="letterbox", s3={}, limits={})


@pytest.mark.integration
def test_a_job_over_a_manifest_of_bad_entries_accounts_for_each(ray_cluster, tmp_path, photos):
    """A real run on Ray over a .txt manifest: the photos are annotated, every other entry is an error row with
    stage `read`, and the run succeeds."""
    from camray.config import load_config
    from camray.runner import run_job

    good, bad = _entries(tmp_path, photos)
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("\n".join([*good, *bad]) + "\n")
    out = tmp_path / "out"
    config = load_config(overrides={"source.uri": str(manifest), "sink.uri": str(out), "runtime.decode_batch_size": 4})
    summary = run_job(config)
    assert (summary.status, summary.listed, summary.results, summary.errors) == ("succeeded", 12, 2, 10)
    results = pq.read_table(out / "results").to_pylist()
    assert sorted(row["image_uri"] for row in results) == sorted(good)
    errors = {row["image_uri"]: row for row in pq.read_table(out / "errors").to_pylist()}
    assert sorted(errors) == sorted(bad)
    for uri, (error_type, fragment) in bad.items():
        assert (errors[uri]["stage"], errors[uri]["error_type"]) == ("read", error_type), uri
        assert fragment in errors[uri]["message"], uri
    runs = pq.read_table(out / "runs").to_pylist()
    assert [(run["status"], run["errors"]) for run in runs] == [("succeeded", 10)]
