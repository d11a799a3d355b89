"""Benchmarks, measured side by side in one run on one machine: `make bench` or `python -m camray.bench`.

For each model (EfficientNet-Lite0 with its real weights, ResNet-50 with random weights: throughput does not
depend on training), on the same batches of real photos:
- forward-only classification (the limit), and the `fast` preset's predictor (top-5, CAMs of all five, boxes, its
  label maps), and each other preset's beside it, label maps included as the job writes them; the default preset's
  also without its label maps, for what they cost it;
- TorchCAM's CAM and pytorch-grad-cam's GradCAM, against our CAM and Grad-CAM (top-1 map per image, as the
  peers compute it);
- the whole job (list, read, decode, predict, write Parquet) as marginal throughput: N and 2N images, twice
  each, alternating, on one Ray cluster started beforehand, N / (median t_2N - median t_N), so start-up and
  actor set-up cancel out; compared with forward-only measured between those jobs, and with the same jobs
  without label maps beside them, for what the label maps cost a whole run;
- peak resident memory of the driver and Ray workers for N and 4N images;
- for one timm transformer and one timm CNN (`--timm-models`, random weights), the predictor of the default preset
  beside forward-only on the same batch: what explaining a transformer costs over classifying with it.
Prints a table and writes `bench-results.json`. Ratios are the results; absolute numbers vary by machine.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from camray.bench.memory import MemorySampler
from camray.cam.methods import MapExtractor
from camray.config import JobConfig, ModelConfig, load_config
from camray.host_memory import retain_freed_memory
from camray.image.decode import decode_image
from camray.models import resolve_setup
from camray.predictor import Annotator, decode_side, pick_device
from camray.presets import DEFAULT_PRESET, PRESETS
from camray.samples import sample_photos


@dataclass(frozen=True)
class SideBySide:
    """Per-round call times of steps timed in interleaved rounds (one call of each per round), so that machine
    noise and clock drift hit all of them alike."""

    images_per_step: int
    times: dict[str, list[float]]

    def throughput(self, name: str) -> float:
        """Images/s of a step, from its median call time."""
        return self.images_per_step / float(np.median(self.times[name]))

    def ratio(self, name: str, baseline: str) -> float:
        """Throughput of `name` over that of `baseline`: the median of the ratios within each round, so a
        machine that slows down between rounds moves neither side of any one ratio."""
        return float(np.median(np.array(self.times[baseline]) / np.array(self.times[name])))


def side_by_side(steps: dict[str, Callable[[], object]], images_per_step: int, seconds: float) -> SideBySide:
    """Times each step in interleaved rounds for at least `seconds` per step and five rounds."""
    for step in steps.values():  # warm-up: allocator, thread pools, lazy initialisation
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    clock = time.perf_counter()
    while time.perf_counter() - clock < seconds * len(steps) or len(next(iter(times.values()))) < 5:
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return SideBySide(images_per_step, times)


def _batch(size: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    photos = list(sample_photos().values())
    decoded = [decode_image(photos[i % len(photos)].read_bytes(), size, "letterbox") for i in range(batch_size)]
    pixels = torch.from_numpy(np.stack([d.pixels for d in decoded]))
    valid = torch.tensor([[d.valid_width, d.valid_height] for d in decoded])
    return pixels, valid


def _forward_setup(loaded, config: JobConfig, batch_size: int):
    """The predictor, its batch (uint8 pixels, valid sizes, prepared input) and the forward-only step on it."""
    device = pick_device(config.model.device)
    size = loaded.setup.input_size
    annotator = Annotator(loaded, config.cam, config.boxes, device, config.model.precision, masks=config.masks)
    pixels, valid = _batch(size, batch_size)
    x = annotator.prepare(pixels, valid)

    def forward() -> None:
        with torch.inference_mode():
            loaded.module(x)

    return annotator, pixels, valid, x, forward


def compute_benchmarks(loaded, config: JobConfig, batch_size: int, seconds: float) -> dict[str, float]:
    """Images/s of forward-only, the predictor, and the CAM peers on identical batches, and the two ratios
    among them with targets (predictor / forward-only, our Grad-CAM / pytorch-grad-cam's), paired by round."""
    from pytorch_grad_cam import GradCAM
    from torchcam.methods import CAM

    # `predictor_top5` is `fast`'s, whatever the default preset: the presets' costs are ratios to it.
    fast = load_config(overrides={"sink.uri": "unused", "model.name": config.model.name}, preset="fast")
    annotator, pixels, valid, x, forward = _forward_setup(loaded, fast, batch_size)
    model = loaded.module
    spec = loaded.spec
    gradcam = MapExtractor(model, spec, "gradcam")
    peer_gradcam = GradCAM(model=model, target_layers=[model.get_submodule(spec.target_layer)])
    steps: dict[str, Callable[[], object]] = {
        "forward_only": forward,
        "predictor_top5": lambda: annotator.annotate(pixels, valid),
        "ours_gradcam_top1": lambda: gradcam(x, 1),
        "pytorch_grad_cam_gradcam_top1": lambda: peer_gradcam(input_tensor=x, targets=None),
    }
    peer_cam = None
    if spec.classifier_layer:
        cam = MapExtractor(model, spec, "cam")
        peer_cam = CAM(model, target_layer=spec.target_layer, fc_layer=spec.classifier_layer)

        def torchcam_step() -> None:
            with torch.inference_mode():
                scores = model(x)
                peer_cam(class_idx=scores.argmax(1).tolist(), scores=scores)

        steps["ours_cam_top1"] = lambda: cam(x, 1)
        steps["torchcam_cam_top1"] = torchcam_step
    if spec.refine_layer:  # the other presets' modes hook the stride-16 block the registry names
        steps.update(_preset_steps(loaded, config, batch_size))
    try:
        timed = side_by_side(steps, batch_size, seconds)
    finally:
        peer_gradcam.__exit__(None, None, None)
        if peer_cam is not None:
            peer_cam.remove_hooks()
        for param in model.parameters():  # pytorch-grad-cam leaves gradients behind
            param.grad = None
    results = {name: timed.throughput(name) for name in steps}
    results["ratio_predictor_vs_forward"] = timed.ratio("predictor_top5", "forward_only")
    results["ratio_gradcam_vs_pytorch_grad_cam"] = timed.ratio("ours_gradcam_top1", "pytorch_grad_cam_gradcam_top1")
    for preset in PRESETS:  # cost an image against `fast`'s predictor (target for accurate: <= 5)
        for suffix in ("", "_every_image"):
            if f"predictor_{preset}{suffix}" in steps:
                results[f"ratio_cost_{preset}{suffix}_vs_fast"] = timed.ratio(
                    "predictor_top5", f"predictor_{preset}{suffix}"
                )
    without = f"predictor_{DEFAULT_PRESET}_without_label_maps"
    if without in steps:  # the default preset with its label maps over itself without them (target: <= 1.15)
        results[f"ratio_cost_label_maps_{DEFAULT_PRESET}"] = timed.ratio(without, f"predictor_{DEFAULT_PRESET}")
    return results


def _preset_steps(loaded, config: JobConfig, batch_size: int) -> dict[str, Callable[[], object]]:
    """The predictor of each preset other than `fast` (whose predictor is `predictor_top5`) on the same
    photos, decoded at the canvas side its mode needs; the model object is shared, as in one actor."""
    device = pick_device(config.model.device)
    size = loaded.setup.input_size
    steps: dict[str, Callable[[], object]] = {}
    for preset in PRESETS:
        if preset == "fast":
            continue
        resolved = load_config(overrides={"sink.uri": "unused", "model.name": config.model.name}, preset=preset)
        if resolved.model.name != config.model.name or (resolved.model.input_size or size) != size:
            continue  # a preset that changes the model is timed under its own model's name
        pixels, valid = _batch(decode_side(resolved.tiling, size), batch_size)
        variants = {f"predictor_{preset}": (resolved.cam, resolved.masks)}
        if resolved.cam.plain_above_score is not None:
            # The sample photos are close-ups the model is mostly sure of, which keep the plain map and skip the
            # preset's extra work: its cost on a wide shot, where every image does that work, is timed apart.
            every_image = resolved.cam.model_copy(update={"plain_above_score": None})
            variants[f"predictor_{preset}_every_image"] = (every_image, resolved.masks)
        if preset == DEFAULT_PRESET and resolved.masks.label_maps:  # what its label maps cost it (issue 31)
            without = resolved.masks.model_copy(update={"label_maps": False})
            variants[f"predictor_{preset}_without_label_maps"] = (resolved.cam, without)
        for step, (cam, masks) in variants.items():
            annotator = Annotator(
                loaded,
                cam,
                resolved.boxes,
                device,
                config.model.precision,
                tiling=resolved.tiling,
                masks=masks,
            )
            steps[step] = lambda a=annotator, p=pixels, v=valid: a.annotate(p, v)
    return steps


def timm_benchmarks(name: str, batch_size: int, seconds: float, root: Path) -> dict[str, float]:
    """Forward-only and the default preset's predictor (top-5 maps and boxes) of `timm:NAME`, side by side on the
    same batch of the sample photos, with random weights saved as a safetensors file as the hub publishes them."""
    from safetensors.torch import save_file

    from camray.models import get_spec

    weights = root / f"{name.removeprefix('timm:')}.safetensors"
    save_file({k: v.contiguous() for k, v in get_spec(name).build().model.state_dict().items()}, str(weights))
    config = load_config(overrides={"sink.uri": "unused", "model.name": name, "model.weights": str(weights)})
    loaded = resolve_setup(config.model)
    annotator, pixels, valid, _, forward = _forward_setup(loaded, config, batch_size)
    timed = side_by_side(
        {"forward_only": forward, "predictor_top5": lambda: annotator.annotate(pixels, valid)}, batch_size, seconds
    )
    return {
        "forward_only": timed.throughput("forward_only"),
        "predictor_top5": timed.throughput("predictor_top5"),
        "ratio_predictor_vs_forward": timed.ratio("predictor_top5", "forward_only"),
        "input_size": float(loaded.spec.input_size),
        "uses_cam": float(annotator.method == "cam"),
    }


def _image_folder(root: Path, count: int) -> Path:
    """`count` files cycling through the sample photos, re-encoded once as JPEG (quality 90), the format of
    nearly every photo dataset; five of the six samples ship as PNG."""
    from PIL import Image

    sources = root / "jpeg-sources"
    if not sources.exists():
        sources.mkdir(parents=True)
        for name, path in sample_photos().items():
            Image.open(path).convert("RGB").save(sources / f"{Path(name).stem}.jpg", quality=90)
    jpegs = sorted(sources.iterdir())
    folder = root / f"images-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        source = jpegs[i % len(jpegs)]
        shutil.copyfile(source, folder / f"{i:06d}-{source.name}")
    return folder


def forward_meter(loaded, config: JobConfig, batch_size: int, seconds: float) -> Callable[[], float]:
    """A callable measuring forward-only images/s over `seconds`, on the same batch as `compute_benchmarks`."""
    forward = _forward_setup(loaded, config, batch_size)[-1]
    return lambda: side_by_side({"forward": forward}, batch_size, seconds).throughput("forward")


def job_benchmarks(
    model_overrides: dict[str, object], n: int, root: Path, forward: Callable[[], float], rounds: int = 2
) -> dict[str, float]:
    """Marginal whole-job throughput (N vs 2N) with and without label maps, and peak memory (N vs 4N), on an
    already started Ray.

    The N and 2N jobs alternate for `rounds` rounds, each beside the same job with `masks.label_maps: false`
    (what the label maps cost a run, as issue 31 measures it: the same run without them), and the median time of
    each counts; forward-only throughput is measured again between the jobs. On a shared machine the speed
    drifts over minutes, so the job's ratios must compare like with like."""
    from camray.runner import run_job

    variants = {"": {}, "_without_label_maps": {"masks.label_maps": False}}
    timings: dict[tuple[str, int], list[float]] = {}
    peaks: dict[int, int] = {}
    forwards = [forward()]
    for count in [n, 2 * n] * rounds + [4 * n]:
        folder = _image_folder(root, count)
        timed = variants if count <= 2 * n else {"": {}}  # the 4N job measures memory only
        for suffix, extra in timed.items():
            runs = timings.setdefault((suffix, count), [])
            config = load_config(
                overrides={
                    "source.uri": str(folder),
                    "sink.uri": str(root / f"out-{count}{suffix}-{len(runs)}"),
                    "sink.incremental": False,
                    **model_overrides,
                    **extra,
                }
            )
            # Sampled alike, so that both variants carry the sampler's cost; only the runs as configured count.
            with MemorySampler() as sampler:
                clock = time.perf_counter()
                summary = run_job(config)
                runs.append(time.perf_counter() - clock)
            if not suffix:
                peaks[count] = max(peaks.get(count, 0), sampler.peak)
            if summary.results != count:
                raise RuntimeError(f"job over {count} images gave {summary.results} results")
        if count <= 2 * n:
            forwards.append(forward())
    numbers = {"forward_only_around_job": float(np.median(forwards))}
    for suffix in variants:
        seconds_n, seconds_2n = float(np.median(timings[suffix, n])), float(np.median(timings[suffix, 2 * n]))
        numbers[f"job_marginal{suffix}"] = n / (seconds_2n - seconds_n)
        numbers[f"job_seconds_n{suffix}"] = seconds_n
        numbers[f"job_seconds_2n{suffix}"] = seconds_2n
    numbers["peak_rss_n_mib"] = peaks[n] / 2**20
    numbers["peak_rss_4n_mib"] = peaks[4 * n] / 2**20
    return numbers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["efficientnet_lite0", "resnet50"])
    parser.add_argument(
        "--timm-models",
        nargs="*",
        default=["timm:vit_small_patch16_224", "timm:resnet50"],
        help="timm models timed in-process, predictor beside forward-only (a transformer and a CNN)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 on CPU, 256 on GPU")
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum timing window per measurement")
    parser.add_argument(
        "--job-images",
        type=int,
        default=None,
        help="N for the whole-job measurements; default: what forward-only gets through in --job-seconds "
        "(at least 256), so that the N-vs-2N difference outweighs the start-up jitter of a job",
    )
    parser.add_argument("--job-seconds", type=float, default=20.0)
    parser.add_argument("--output", default="bench-results.json")
    args = parser.parse_args(argv)

    import ray
    import torchvision

    # The predictor actors run with this allocator setting (see `camray.host_memory`); in-process
    # measurements get it too, or they would compare against a forward pass slowed by page faults.
    retain_freed_memory()
    gpu = torch.cuda.is_available()
    batch_size = args.batch_size or (256 if gpu else 16)
    report: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"
        + (f", {torch.cuda.get_device_name()}" if gpu else ", no GPU"),
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": importlib.metadata.version("timm"),
            "ray": ray.__version__,
        },
        "batch_size": batch_size,
        "models": {},
    }
    report["timm"] = {}
    with tempfile.TemporaryDirectory(prefix="camray-bench-timm-") as timm_root:
        for name in args.timm_models:
            numbers = timm_benchmarks(name, batch_size, args.seconds, Path(timm_root))
            report["timm"][name] = numbers
            print(_table(name, numbers), flush=True)
    if not args.models:
        Path(args.output).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.output}")
        return 0
    ray.init(logging_level="ERROR", log_to_driver=False)
    # Ray Data logs every operator's progress every 10 s when stdout is not a terminal: the table would drown.
    ray.data.DataContext.get_current().enable_progress_bars = False
    root = Path(tempfile.mkdtemp(prefix="camray-bench-"))
    try:
        for name in args.models:
            overrides: dict[str, object] = {"model.name": name, "runtime.batch_size": batch_size}
            if name.startswith("efficientnet_lite"):
                loaded = resolve_setup(ModelConfig(name=name))
            else:  # no hub here: random weights in a file, as a user would pass their own
                weights = root / f"{name}.pth"
                torch.save(torchvision.models.get_model(name, weights=None).state_dict(), weights)
                overrides["model.weights"] = str(weights)
                loaded = resolve_setup(ModelConfig(name=name, weights=str(weights)))
            config = load_config(overrides={"sink.uri": "unused", **overrides})
            numbers = compute_benchmarks(loaded, config, batch_size, args.seconds)
            meter = forward_meter(loaded, config, batch_size, args.seconds)
            n = args.job_images or max(256, math.ceil(args.job_seconds * numbers["forward_only"] / 64) * 64)
            numbers["job_images_n"] = n
            numbers.update(job_benchmarks(overrides, n, root, meter))
            numbers["ratio_job_vs_forward"] = numbers["job_marginal"] / numbers["forward_only_around_job"]
            numbers["ratio_job_cost_label_maps"] = numbers["job_marginal_without_label_maps"] / numbers["job_marginal"]
            numbers["ratio_memory_4n_vs_n"] = numbers["peak_rss_4n_mib"] / numbers["peak_rss_n_mib"]
            report["models"][name] = numbers
            print(_table(name, numbers), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return 0


def _table(name: str, numbers: dict[str, float]) -> str:
    lines = [f"\n{name}", f"{'measure':<42} {'value':>12}"]
    for key, value in numbers.items():
        plain = key.startswith(("ratio", "input_size", "uses_")) or any(w in key for w in ("mib", "seconds", "images"))
        unit = "" if plain else " img/s"
        lines.append(f"{key:<42} {value:>12.2f}{unit}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
