"""The scale benchmark's inputs and its listing measurement, at small sizes (the benchmark itself is
`make bench-scale`, never a test)."""

from __future__ import annotations

import functools
from collections.abc import Iterator

from PIL import Image

from camray.bench.scale import image_folder, local_tree, manifest, measure_listing
from camray.io.listing import iter_listing, list_inputs
from camray.io.sources import Listed, S3Settings


def test_image_folder_holds_varied_small_jpegs_made_once(tmp_path):
    folder = image_folder(30, tmp_path)
    files = sorted(folder.rglob("*.jpg"))
    assert len(files) == 30
    sizes = set()
    for path in files:
        with Image.open(path) as image:
            assert image.format == "JPEG" and 64 <= image.width <= 128 and 64 <= image.height <= 128
            sizes.add(image.size)
    assert len(sizes) > 10
    again = image_folder(30, tmp_path)
    assert again == folder and sorted(again.rglob("*.jpg"))[0].stat().st_ino == files[0].stat().st_ino
    # A larger folder shares the smaller one's files (hard links to one pool).
    larger = sorted(image_folder(40, tmp_path).rglob("*.jpg"))
    assert len(larger) == 40 and larger[0].stat().st_ino == files[0].stat().st_ino


def _chunks(entries: int, chunk: int) -> Iterator[list[Listed]]:
    for start in range(0, entries, chunk):
        yield [Listed(f"s3://b/{i}.jpg", -1, "") for i in range(start, min(entries, start + chunk))]


def test_measure_listing_of_a_list_and_of_a_stream_of_chunks(tmp_path):
    tree = local_tree(2500, tmp_path)
    measured = measure_listing(functools.partial(list_inputs, str(tree), [".jpg"], True, S3Settings()))
    assert measured["entries"] == 2500 and measured["seconds"] > 0
    assert measured["peak_rss_mib"] >= measured["before_mib"] > 10
    streamed = measure_listing(functools.partial(_chunks, 10_000, 1_000))
    assert streamed["entries"] == 10_000
    arrow = measure_listing(functools.partial(iter_listing, str(tree), [".jpg"], True, S3Settings(), 1_000))
    assert arrow["entries"] == 2500


def test_manifests_list_every_entry(tmp_path):
    for suffix in (".txt", ".parquet"):
        path = manifest(1234, suffix, tmp_path)
        listed = list_inputs(str(path), [".jpg"], True, S3Settings())
        assert len(listed) == 1234 and listed[0].uri == "s3://camray-scale/images/0000/0000000.jpg"
