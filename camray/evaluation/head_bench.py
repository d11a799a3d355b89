"""Bench of a user's own head through the real job: train it, run `camray run` with it, score the COCO export.

`python -m camray.evaluation.head_bench [--out data/head_bench] [--preset balanced] [--heads imagenet trained]
[--images 1500] [--seed 0] [--head DIR] [--per-texture 6] [--set FIELD=VALUE ...]` (`make bench-head`):

1. builds the multi-object scenes (`camray.evaluation.scenes`) under `OUT/scenes`;
2. trains the multi-label kinds head on frozen Lite0 (`camray.evaluation.kinds_head`: generated images apart from
   every scored one; seeded, a few minutes of CPU), saved as `OUT/trained/head.pth` and `OUT/trained/labels.txt`
   (`--head DIR` reuses one trained before);
3. for each head, writes a manifest with labels (`OUT/HEAD/manifest.csv`, `uri,labels`, labels separated by `|`):
   each image's truth kinds, as `camray.evaluation.given_labels` makes them labels (the trained head's class names;
   for ImageNet's head, the id of each kind's class the head scores highest on the image);
4. runs the real job on it (`python -m camray.cli run --input manifest.csv --cam.classes given ...`, the trained
   head with `--weights head.pth --model.labels labels.txt --model.head sigmoid`), on the cluster at
   `RAY_ADDRESS` or a local one, with the `--set` fields as its flags (`model.input_size=320`), exports every
   box as COCO (`camray export coco --min-score 0`) and scores the export with `python -m
   camray.evaluation.multi` (`--labels labels.txt` for the trained head, whose truth is its own classes);
5. prints the two heads' object recall, box precision and AP50 side by side and writes them with the job's
   figures (images, errors, seconds) to `OUT/results.json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from camray.evaluation import scenes
from camray.evaluation.evaluate import load_truth

HEADS = ("imagenet", "trained")
DEFAULT_PRESET = "balanced"


def write_manifest(path: Path, images: Path, labels: dict[str, list[str]]) -> Path:
    """`path`: a CSV manifest (`uri,labels`) of the images of `images` that have labels, labels joined by `|`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uri", "labels"])
        for image in sorted(images.glob("*.png")):
            if image.name in labels:
                writer.writerow([str(image.resolve()), "|".join(labels[image.name])])
    return path


def _camray(*args: str) -> list[str]:
    return [sys.executable, "-m", "camray.cli", *args]


def _run(command: list[str], log: Path) -> None:
    """Runs `command`, its output into `log`; a failure names the command and the log's tail."""
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=os.environ.copy(), check=False)
    if done.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"`{' '.join(command[1:4])} ...` exited {done.returncode}; {log}:\n{tail}")


def head_flags(head: str, folder: Path) -> list[str]:
    """The job's model flags for `head`: none for ImageNet's, the trained head's checkpoint and labels otherwise."""
    if head == "imagenet":
        return []
    return [
        "--model.name",
        "efficientnet_lite0",
        "--weights",
        str(folder / "head.pth"),
        "--model.labels",
        str(folder / "labels.txt"),
        "--model.head",
        "sigmoid",
    ]


def labels_for(head: str, folder: Path, truth_csv: Path, images: Path) -> dict[str, list[str]]:
    """Each scene's labels for `head` (`camray.evaluation.given_labels`)."""
    from camray.evaluation.given_labels import head_scores, image_kinds, imagenet_labels, trained_labels

    truth = load_truth(truth_csv)
    if head == "trained":
        return trained_labels(image_kinds(truth), (folder / "labels.txt").read_text().split())
    from camray.config import load_config

    scores = head_scores(load_config(overrides={"sink.uri": "unused"}), sorted(images.glob("*.png")))
    return imagenet_labels(truth, scores)


def bench_head(
    head: str, out: Path, trained: Path, truth_csv: Path, images: Path, preset: str, fields: Sequence[str] = ()
) -> dict[str, Any]:
    """One head through the job (`fields`: `FIELD=VALUE` overrides, as its flags), its export and the scorer; the
    scorer's report with the job's figures."""
    folder = out / head
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "commands.log"
    log.write_text("")
    labels = labels_for(head, trained, truth_csv, images)
    manifest = write_manifest(folder / "manifest.csv", images, labels)
    job = folder / "job"
    clock = time.perf_counter()
    run = _camray("run", "--input", str(manifest), "--output", str(job), "--preset", preset, "--cam.classes", "given")
    flags = [part for field in fields for part in (f"--{field.split('=', 1)[0]}", field.split("=", 1)[1])]
    _run([*run, *flags, *head_flags(head, trained)], log)
    seconds = time.perf_counter() - clock
    coco = folder / "coco.json"
    _run(_camray("export", "coco", "--output", str(job), "--min-score", "0", "--dest", str(coco)), log)
    report = folder / "score.json"
    score = [sys.executable, "-m", "camray.evaluation.multi", "--coco", str(coco), "--truth", str(truth_csv)]
    if head == "trained":
        score += ["--labels", str(trained / "labels.txt")]
    _run([*score, "--json", str(report)], log)
    result = json.loads(report.read_text())
    exported = json.loads(coco.read_text())
    return {
        **result,
        "head": head,
        "preset": preset,
        "fields": list(fields),
        "images_labelled": len(labels),
        "images_exported": len(exported["images"]),
        "job_seconds": seconds,
    }


def table(results: list[dict[str, Any]]) -> str:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        "| head | images, objects, boxes | object recall | box precision | AP50 per kind | AP50 class-agnostic "
        "| job seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['head']} | {r['images']}, {r['objects']}, {r['boxes']} | {r['object_recall']:.3f} "
            f"| {r['box_precision']:.3f} | {number(r['ap50'])} | {number(r['ap50_agnostic'])} "
            f"| {r['job_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/head_bench", help="folder for the scenes, the head, jobs and results")
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="the jobs' preset")
    parser.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
    parser.add_argument("--images", type=int, default=1500, help="training images of the kinds head")
    parser.add_argument("--seed", type=int, default=0, help="the kinds head's training seed")
    parser.add_argument("--head", help="a folder with a trained head.pth and labels.txt: no training")
    parser.add_argument("--per-texture", type=int, default=scenes.SCENES_PER_TEXTURE, help="scenes a texture")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="the jobs' config overrides")
    args = parser.parse_args(argv)
    if bad := [field for field in args.set if "=" not in field]:
        parser.error(f"--set takes FIELD=VALUE, got {bad}")
    out = Path(args.out)
    truth_csv = scenes.build(out / "scenes", per_texture=args.per_texture)
    trained = Path(args.head) if args.head else out / "trained"
    if "trained" in args.heads and not args.head:
        from camray.evaluation.kinds_head import train

        train(trained, args.images, args.seed)
    images = out / "scenes" / "images"
    results = [bench_head(head, out, trained, truth_csv, images, args.preset, args.set) for head in args.heads]
    print(table(results))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {(out / 'results.json').resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
