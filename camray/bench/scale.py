"""Scale benchmark: `make bench-scale` or `python -m camray.bench.scale [--images 5000,50000]`.

- The whole job over N small JPEGs (64..128 px crops of the sample photos, varied, made once under
  `data/bench-scale/`), for each N given, on one Ray cluster started beforehand: images per second, and the
  peaks of the driver's RSS, of the Ray workers' summed RSS and of the object store's bytes in use, each also
  over time (the peak within each tenth of the run). Memory is flat when the peaks at the largest N are at
  most 1.2 times those at the smallest.
- Listing: a 1,000,000-entry manifest (.txt and .parquet) and a 200,000-file local tree, each listed in a
  fresh process: wall time and peak RSS of that process (the driver's share of a job's listing).
Prints a table and writes `bench-scale-results.json`. Absolute numbers vary by machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from camray.bench.memory import MemorySampler
from camray.io.listing import iter_listing
from camray.io.sources import S3Settings

CACHE = Path("data/bench-scale")
FLAT_MEMORY_RATIO = 1.2


def _jpeg_pool(count: int, root: Path = CACHE) -> list[Path]:
    """`count` small JPEGs, random crops (64..128 px a side) of the sample photos at varied quality; written
    once, reused by later runs (seeded, so every run sees the same files)."""
    from PIL import Image

    from camray.samples import sample_photos

    pool = root / "jpegs"
    existing = sorted(pool.glob("*/*.jpg")) if pool.exists() else []
    if len(existing) >= count:
        return existing[:count]
    photos = [Image.open(path).convert("RGB") for _, path in sorted(sample_photos().items())]
    rng = random.Random(0)
    for i in range(count):
        target = pool / f"{i // 1000:03d}" / f"{i:06d}.jpg"
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        photo = photos[i % len(photos)]
        width, height = rng.randint(64, 128), rng.randint(64, 128)
        side = rng.randint(max(width, height), min(photo.size))  # crop a square-ish region, then shrink it
        x, y = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
        crop = photo.crop((x, y, x + side, y + side)).resize((width, height), Image.Resampling.BILINEAR)
        crop.save(target, quality=rng.randint(75, 95))
    return sorted(pool.glob("*/*.jpg"))[:count]


def image_folder(count: int, root: Path = CACHE) -> Path:
    """A folder of exactly `count` of the pool's JPEGs, as hard links (no copies of the bytes)."""
    folder = root / f"images-{count}"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for source in _jpeg_pool(count, root):
        target = folder / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)
    marker.touch()
    return folder


def run_scale(
    counts: list[int],
    model_overrides: dict[str, object],
    root: Path,
    done: Callable[[dict[str, dict[str, object]]], None] = lambda results: None,
) -> dict[str, dict[str, object]]:
    """The job over each count's folder on the Ray cluster this process is connected to; `done` gets the
    results so far after each job (a long run keeps what it measured if stopped)."""
    from camray.config import load_config
    from camray.runner import run_job

    results: dict[str, dict[str, object]] = {}
    for count in counts:
        folder = image_folder(count)
        config = load_config(
            overrides={
                "source.uri": str(folder.resolve()),
                "sink.uri": str(root / f"out-{count}"),
                "sink.incremental": False,
                **model_overrides,
            }
        )
        with MemorySampler(interval=0.2, object_store_every=1.0, pss_every=1.0) as sampler:
            clock = time.perf_counter()
            summary = run_job(config)
            seconds = time.perf_counter() - clock
        if summary.results + summary.errors != count or summary.status != "succeeded":
            raise RuntimeError(f"job over {count} images: {summary}")
        shutil.rmtree(root / f"out-{count}", ignore_errors=True)
        results[str(count)] = {
            "images": count,
            "errors": summary.errors,
            "seconds": seconds,
            "images_per_second": count / seconds,
            "peak_driver_rss_mib": sampler.peak_driver / 2**20,
            "peak_workers_rss_mib": sampler.peak_workers / 2**20,
            "peak_workers_anon_mib": sampler.peak_workers_anon / 2**20,
            "peak_workers_pss_mib": sampler.peak_workers_pss / 2**20,
            "peak_rss_mib": sampler.peak / 2**20,
            "peak_object_store_mib": sampler.peak_object_store / 2**20,
            "over_time": sampler.timeline(),
        }
        print(_job_table(results[str(count)]), flush=True)
        done(results)
    return results


def memory_ratios(results: dict[str, dict[str, object]]) -> dict[str, float]:
    """Peaks at the largest count over those at the smallest, per measure."""
    counts = sorted(results, key=int)
    small, large = results[counts[0]], results[counts[-1]]
    keys = (
        "peak_driver_rss_mib",
        "peak_workers_rss_mib",
        "peak_workers_anon_mib",
        "peak_workers_pss_mib",
        "peak_rss_mib",
        "peak_object_store_mib",
    )
    return {f"ratio_{key}": float(large[key]) / float(small[key]) for key in keys if float(small[key]) > 0}


def _count(items: Iterable[object]) -> int:
    """Entries in a listing, whether it is a list, a generator of entries or a generator of chunks."""
    import pyarrow as pa

    total = 0
    for item in items:
        total += len(item) if isinstance(item, list | tuple | pa.Table | pa.RecordBatch) else 1
    return total


def _peak_rss_mib() -> float:
    """This process's peak RSS since its exec (`VmHWM`; `ru_maxrss` would carry over the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _measured(listing: Callable[[], Iterable[object]], queue: multiprocessing.Queue) -> None:
    before = _peak_rss_mib()
    clock = time.perf_counter()
    entries = _count(listing())
    seconds = time.perf_counter() - clock
    queue.put({"entries": entries, "seconds": seconds, "peak_rss_mib": _peak_rss_mib(), "before_mib": before})


def measure_listing(listing: Callable[[], Iterable[object]]) -> dict[str, float]:
    """Wall time and peak RSS of `listing()` consumed to the end, in a fresh process (spawned, so no memory
    of this one counts). `listing` must be picklable: a module-level function or a `functools.partial`.
    `before_mib` is the process's peak before the listing (interpreter and imports)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measured, args=(listing, queue))
    process.start()
    measured = queue.get()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"listing process exited with {process.exitcode}")
    return measured


def manifest(entries: int, suffix: str, root: Path = CACHE) -> Path:
    """A manifest of `entries` S3 URIs (never read: listing a manifest does not touch its entries)."""
    path = root / f"manifest-{entries}{suffix}"
    if path.exists():
        return path
    root.mkdir(parents=True, exist_ok=True)
    uris = [f"s3://camray-scale/images/{i // 1000:04d}/{i:07d}.jpg" for i in range(entries)]
    partial = path.with_suffix(".partial")
    if suffix == ".txt":
        partial.write_text("\n".join(uris) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"uri": uris}), partial)
    partial.rename(path)
    return path


def local_tree(files: int, root: Path = CACHE) -> Path:
    """`files` empty `.jpg` files, 1,000 to a folder (listing reads names and sizes, never contents)."""
    tree = root / f"tree-{files}"
    marker = tree / ".complete"
    if marker.exists():
        return tree
    for i in range(files):
        folder = tree / f"{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:07d}.jpg").touch()
    marker.touch()
    return tree


def run_listing(manifest_entries: int, tree_files: int) -> dict[str, dict[str, float]]:
    extensions = [".jpg"]
    cases: dict[str, Path] = {}
    if manifest_entries:
        cases[f"manifest_txt_{manifest_entries}"] = manifest(manifest_entries, ".txt")
        cases[f"manifest_parquet_{manifest_entries}"] = manifest(manifest_entries, ".parquet")
    if tree_files:
        cases[f"local_tree_{tree_files}"] = local_tree(tree_files)
    results = {}
    for name, path in cases.items():
        # The job's own listing: chunks streamed through, never the whole list.
        listing = functools.partial(iter_listing, str(path.resolve()), extensions, True, S3Settings())
        results[name] = measure_listing(listing)
        numbers = results[name]
        print(
            f"listing {name:<28} {numbers['entries']:>9,d} entries {numbers['seconds']:>7.2f} s "
            f"peak RSS {numbers['peak_rss_mib']:>7.0f} MiB (before listing {numbers['before_mib']:.0f} MiB)",
            flush=True,
        )
    return results


def _job_table(numbers: dict[str, object]) -> str:
    lines = [
        f"\njob over {numbers['images']:,} images: {numbers['seconds']:.0f} s, "
        f"{numbers['images_per_second']:.1f} images/s, {numbers['errors']} errors",
        f"  peak driver RSS {numbers['peak_driver_rss_mib']:.0f} MiB; workers (sums): RSS "
        f"{numbers['peak_workers_rss_mib']:.0f} MiB, anonymous {numbers['peak_workers_anon_mib']:.0f} MiB, "
        f"PSS {numbers['peak_workers_pss_mib']:.0f} MiB; object store {numbers['peak_object_store_mib']:.0f} MiB",
        f"  {'until s':>8} {'driver MiB':>11} {'workers RSS':>12} {'anon':>8} {'PSS':>8} {'store MiB':>10}",
    ]

    def cell(value: float | None, width: int) -> str:
        return f"{(f'{value:.0f}' if value is not None else '-'):>{width}}"

    for row in numbers["over_time"]:
        lines.append(
            f"  {row['until_seconds']:>8.0f} {row['driver_mib']:>11.0f} {row['workers_mib']:>12.0f} "
            f"{row['workers_anon_mib']:>8.0f} {cell(row['workers_pss_mib'], 8)} "
            f"{cell(row['object_store_mib'], 10)}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="5000,50000", help="comma-separated image counts; empty skips the jobs")
    parser.add_argument("--manifest-entries", type=int, default=1_000_000, help="0 skips the manifest listing")
    parser.add_argument("--tree-files", type=int, default=200_000, help="0 skips the local tree listing")
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 on CPU, 256 on GPU")
    parser.add_argument("--output", default="bench-scale-results.json")
    args = parser.parse_args(argv)
    counts = sorted(int(n) for n in args.images.split(",") if n.strip())

    import ray
    import torch

    report: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"),
        "versions": {"torch": torch.__version__, "ray": ray.__version__},
    }
    # Listing first, in fresh processes, before Ray starts to share the machine with it.
    report["listing"] = run_listing(args.manifest_entries, args.tree_files)
    if counts:
        overrides: dict[str, object] = {}
        if args.batch_size:
            overrides["runtime.batch_size"] = args.batch_size
        _write(report, args.output)
        for count in counts:  # make every folder before timing anything
            image_folder(count)
        ray.init(logging_level="ERROR", log_to_driver=False)
        # Ray Data logs every operator's progress every 10 s when stdout is not a terminal: the table would drown.
        ray.data.DataContext.get_current().enable_progress_bars = False
        root = Path(tempfile.mkdtemp(prefix="camray-bench-scale-"))
        try:
            report["jobs"] = run_scale(
                counts, overrides, root, done=lambda results: _write({**report, "jobs": results}, args.output)
            )
        finally:
            ray.shutdown()
            shutil.rmtree(root, ignore_errors=True)
        if len(counts) > 1:
            ratios = memory_ratios(report["jobs"])
            report["memory_ratios"] = ratios
            print(f"\npeaks at {counts[-1]:,} over peaks at {counts[0]:,} images (flat: <= {FLAT_MEMORY_RATIO}):")
            for key, value in ratios.items():
                print(f"  {key.removeprefix('ratio_'):<28} {value:.2f}")
    _write(report, args.output)
    print(f"wrote {args.output}")
    return 0


def _write(report: dict[str, object], output: str) -> None:
    Path(output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
