"""Label maps through the real job, scored in mIoU: `camray run`, `camray export masks`, then the scorer.

`python -m camray.evaluation.seg_job [--segset data/segset] [--head data/kinds_head] [--out data/seg-job]
[--heads trained imagenet] [--presets fast balanced accurate] [--classes given predicted] [--costs ROUNDS]
[--json OUT]`

For each head, preset and class choice it runs the job over the segmentation set (`camray.evaluation.segset`;
its manifest's labels with `cam.classes: given`) on a local Ray cluster of its own, exports the label maps
(`camray.outputs.mask_export`) and scores them with `camray.evaluation.segmentation`, on every image and on the
`test` images, beside the in-process sweep's score of the same settings (`camray.evaluation.seg_sweep`): the two
must agree, since the job's label maps are the annotator's, written as RLEs and read back. The trained head is the
one `camray.evaluation.kinds_head` writes (a job with `--weights head.pth --model.labels labels.txt --model.head
sigmoid`); ImageNet's is given each kind's ImageNet classes (`segset.IMAGENET_KINDS`), its names mapped onto the
set's by the scorer's `--names`, the kinds it has no class for unscored.

With `--costs ROUNDS`, it also times the job over the set with and without label maps (`masks.label_maps`), the
two alternated ROUNDS times on the same cluster, for each preset: what writing label maps costs a run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from camray.evaluation import seg_sweep
from camray.evaluation.segmentation import score_folders
from camray.evaluation.segset import CLASSES, IMAGENET_KINDS, build, split_of
from camray.outputs.label_png import CLASSES_FILE


def _manifest_for(head: str, segset: Path, out: Path) -> Path:
    """The set's manifest as the head names its classes: the trained head's are the set's own; ImageNet's, each
    kind's ImageNet class ids."""
    if head == "trained":
        return segset / "images.csv"
    lines = ["uri,labels"]
    for uri, labels in seg_sweep.manifest(segset):
        ids = [str(i) for kind in labels for i in IMAGENET_KINDS.get(kind, ())]
        lines.append(f"{uri},{'|'.join(ids)}")
    path = out / "images-imagenet.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _imagenet_names() -> dict[str, str]:
    """ImageNet's class names -> the set's kinds (the scorer's `--names`)."""
    from camray.models.spec import imagenet_categories

    names = imagenet_categories()
    return {names[i]: kind for kind, ids in IMAGENET_KINDS.items() for i in ids}


def _overrides(head: str, head_dir: Path, manifest: Path, output: Path, given: bool) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "source.uri": str(manifest),
        "sink.uri": str(output),
        "cam.classes": "given" if given else "predicted",
        "runtime.batch_size": 8,
    }
    if head == "trained":
        overrides.update(
            {
                "model.weights": str(head_dir / "head.pth"),
                "model.labels": str(head_dir / "labels.txt"),
                "model.head": "sigmoid",
            }
        )
    return overrides


def _test_truth(segset: Path, out: Path) -> Path:
    """A truth folder of the `test` images alone (links), for the scorer."""
    folder = out / "truth-test"
    if not folder.exists():
        folder.mkdir(parents=True)
        shutil.copy(segset / "truth" / CLASSES_FILE, folder / CLASSES_FILE)
        for path in (segset / "truth").glob("*.png"):
            if split_of(path.stem) == "test":
                (folder / path.name).symlink_to(path.resolve())
    return folder


def through_the_job(head: str, preset: str, given: bool, segset: Path, head_dir: Path, out: Path) -> dict[str, Any]:
    """One run over the set, its export and its scores (and the in-process sweep's, for the same settings)."""
    from camray.config import load_config
    from camray.io.output import Output
    from camray.outputs.mask_export import write_masks
    from camray.runner import run_job

    name = f"{head}-{preset}-{'given' if given else 'predicted'}"
    output, export = out / name / "output", out / name / "masks"
    shutil.rmtree(out / name, ignore_errors=True)
    manifest = _manifest_for(head, segset, out)
    config = load_config(overrides=_overrides(head, head_dir, manifest, output, given), preset=preset)
    clock = time.perf_counter()
    summary = run_job(config)
    seconds = time.perf_counter() - clock
    write_masks(Output(str(output)), export)
    names = _imagenet_names() if head == "imagenet" else None
    unscored = [kind for kind in CLASSES if kind not in IMAGENET_KINDS] if head == "imagenet" else []
    every = score_folders(export, segset / "truth", names, unscored)
    test = score_folders(export, _test_truth(segset, out), names, unscored)
    loaded, imagenet = seg_sweep.load_sweep_head(head, head_dir)
    items, _ = seg_sweep.collect(seg_sweep.sweep_config(preset, {}, given), loaded, imagenet, segset)

    def own(item: seg_sweep.ImageMaps) -> Any:
        return seg_sweep.job_label_map(item, config.masks.background, config.masks.refine)

    in_process = {
        "test": seg_sweep.score(seg_sweep.split(items, "test"), own).miou,
        "all": seg_sweep.score(items, own).miou,
    }
    line = {
        "head": head,
        "preset": preset,
        "classes": "given" if given else "predicted",
        "results": summary.results,
        "errors": summary.errors,
        "seconds": seconds,
        "job": {"test": test.miou, "all": every.miou},
        "in_process": in_process,
        "per_class_test": {name: entry.iou for name, entry in test.classes.items()},
    }
    print(
        f"| {head} | `{preset}` | {line['classes']} | {test.miou:.3f} / {every.miou:.3f} | "
        f"{in_process['test']:.3f} / {in_process['all']:.3f} | {summary.results} + {summary.errors} errors |",
        flush=True,
    )
    return line


def costs(preset: str, segset: Path, head_dir: Path, out: Path, rounds: int) -> dict[str, Any]:
    """The job over the set with and without label maps, alternated `rounds` times (fresh outputs each run): the
    runs' wall time (their own `seconds`, listing to commit) and the median ratio."""
    from camray.config import load_config
    from camray.runner import run_job

    times: dict[str, list[float]] = {"with": [], "without": []}
    for round_index in range(rounds):
        for case in ("without", "with") if round_index % 2 == 0 else ("with", "without"):
            output = out / f"cost-{preset}-{case}"
            shutil.rmtree(output, ignore_errors=True)
            overrides = _overrides("trained", head_dir, segset / "images.csv", output, True)
            overrides["masks.label_maps"] = case == "with"
            summary = run_job(load_config(overrides=overrides, preset=preset))
            times[case].append(summary.seconds)
            shutil.rmtree(output, ignore_errors=True)
    ratios = [w / o for w, o in zip(times["with"], times["without"], strict=True)]
    result = {"preset": preset, **times, "ratio": statistics.median(ratios)}
    print(
        f"| `{preset}` | {statistics.median(times['without']):.1f} s | {statistics.median(times['with']):.1f} s | "
        f"{result['ratio']:.3f}x |",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segset", default="data/segset")
    parser.add_argument("--head", default="data/kinds_head")
    parser.add_argument("--out", default="data/seg-job", help="the runs' outputs and exports go here")
    parser.add_argument("--heads", nargs="+", choices=["trained", "imagenet"], default=["trained", "imagenet"])
    parser.add_argument("--presets", nargs="+", default=["fast", "balanced", "accurate"])
    parser.add_argument("--classes", nargs="+", choices=["given", "predicted"], default=["given"])
    parser.add_argument("--costs", type=int, default=0, metavar="ROUNDS", help="time runs with and without")
    parser.add_argument("--json", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    segset, head_dir, out = Path(args.segset), Path(args.head), Path(args.out)
    if not (segset / "images.csv").exists():
        build(segset)
    if not (head_dir / "head.pth").exists():
        from camray.evaluation.kinds_head import train

        train(head_dir)
    out.mkdir(parents=True, exist_ok=True)

    import ray

    # A cluster of its own: with no address, ray.init() joins one another process started on the machine.
    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    results: dict[str, Any] = {"runs": [], "costs": []}
    try:
        print("| head | preset | classes | through the job: mIoU test / all | in process | rows |")
        print("|---|---|---|---|---|---|")
        for head in args.heads:
            for preset in args.presets:
                for classes in args.classes:
                    line = through_the_job(head, preset, classes == "given", segset, head_dir, out)
                    results["runs"].append(line)
        if args.costs:
            print("\n| preset | run without label maps | with | ratio (median of rounds) |\n|---|---|---|---|")
            for preset in args.presets:
                results["costs"].append(costs(preset, segset, head_dir, out, args.costs))
    finally:
        ray.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
