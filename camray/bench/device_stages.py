"""Where the predictor's time goes on a GPU: `python -m camray.bench.device_stages` (docs/device-benchmark.md).

`camray.bench.device` says which stage bounds a figure; this says which step inside it. On one batch of the
carried photos (cycled to 256), for EfficientNet-Lite0 and ResNet-50 at bf16, channels-last, eager, it runs the
plain mode's steps one at a time, the device synchronised after each:
- `prepare`, `forward_cams` (the forward pass and the top-5 CAMs), `resample_normalize` (the maps onto the
  whole-image grid), `refine` (times the refining block's activation), `keep_thresholds`, `components`
  (labelling and per-component statistics), `to_host` (every result copied back);
and times alone, in microseconds per image (medians of 7 after 2 warm-up calls): the whole `forward` and
`predictor` (whose box stage is captured on a GPU, `camray.cam.box_stage`); that captured stage alone, from the
forward pass's maps to the boxes on the host (`box_stage_captured`), against the eager steps above; the eager
labelling (`label`) and the statistics that include it (`statistics`); the maps' copy to pageable and to pinned
host memory; `nvjpeg` (the batched decode alone) against `decode` (to canvases).
Like `camray.bench.device`, it imports nothing of Ray, pydantic, DuckDB or boto3. `--smoke` runs it on the CPU
with a batch of 2 at 64 pixels, where the steps are the CPU's (OpenCV labels the components).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from camray.annotator import Annotator
from camray.bench.device import (
    ASSETS,
    LITE0,
    autocast,
    loaded_model,
    make_batch,
    photo_jpegs,
    preset_settings,
    use_carried_packages,
)
from camray.cam.boxes import label_components, statistics_by_scatter
from camray.image.device_decode import _decode_jpegs, decode_to_canvases

MODELS = (LITE0, "resnet50")
WARMUP, ROUNDS = 2, 7


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def median_seconds(call: Callable[[], object]) -> float:
        for _ in range(WARMUP):
            call()
        times = []
        for _ in range(ROUNDS):
            sync()
            start = time.perf_counter()
            call()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return median_seconds


def steps(annotator: Annotator, pixels: torch.Tensor, valid_wh: torch.Tensor) -> dict[str, list[float]]:
    """Seconds of each plain-mode step, the device synchronised after each, over ROUNDS calls after WARMUP."""
    device = annotator.device
    seconds: dict[str, list[float]] = {}
    for call in range(WARMUP + ROUNDS):
        marks = [("start", time.perf_counter())]

        def mark(name: str, marks: list[tuple[str, float]] = marks) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            marks.append((name, time.perf_counter()))

        x = annotator.prepare(pixels, valid_wh)
        mark("prepare")
        forward = annotator._forward(x, annotator.cam_config.refine)
        mark("forward_cams")
        choice = forward.choice
        assert choice is not None
        on_device = valid_wh.to(device)
        maps = annotator._whole_image_maps(forward.raw_maps.float(), on_device, x.shape[-1])
        mark("resample_normalize")
        if forward.activation is not None:
            refined = annotator._refine(maps, forward.activation, on_device, x.shape[-1])
            mark("refine")
            maps, thresholds = annotator._maps_keeping_plain(
                maps, refined, annotator._keeps_plain(choice.predicted_scores)
            )
        else:
            thresholds = annotator._thresholds(maps)
        mark("keep_thresholds")
        components = annotator._components(maps, thresholds, choice)
        mark("components")
        annotator._boxed(choice, maps, thresholds, components)
        mark("to_host")
        if call >= WARMUP:
            for (_, before), (name, after) in zip(marks, marks[1:], strict=False):
                seconds.setdefault(name, []).append(after - before)
    return seconds


def measure_model(name: str, photos: dict[str, bytes], batch_size: int, size: int, device: torch.device) -> dict:
    preset = preset_settings("balanced")
    annotator = Annotator(
        copy.deepcopy(loaded_model(name, size)), preset.cam, preset.boxes, device, "bf16", True, False, None
    )
    batch = make_batch(photos, batch_size, size, device)
    per_image = 1e6 / batch_size
    median = _timer(device)
    x = annotator.prepare(batch.pixels, batch.valid_wh)

    def forward() -> object:
        with torch.inference_mode(), autocast(annotator):
            return annotator.extractor.forward(x)

    figures: dict[str, Any] = {
        "forward": median(forward) * per_image,
        "predictor": median(lambda: annotator.annotate(batch.pixels, batch.valid_wh)) * per_image,
        "steps": {
            step: statistics.median(values) * per_image
            for step, values in steps(annotator, batch.pixels, batch.valid_wh).items()
        },
    }
    with torch.inference_mode():
        forward_out = annotator._forward(x, annotator.cam_config.refine)
        maps = annotator._whole_image_maps(forward_out.raw_maps.float(), batch.valid_wh.to(device), size)
    if annotator.box_stage is not None:  # the box stage as the predictor runs it on a GPU: one graph launch
        scores = annotator._scores(forward_out)
        on_device = batch.valid_wh.to(device)
        figures["box_stage_captured"] = (
            median(lambda: annotator._boxed_by_stage(forward_out, scores, on_device, size)) * per_image
        )
    b, k, grid, _ = maps.shape
    flat = maps.reshape(b * k, grid, grid)
    mask = flat >= annotator._thresholds(maps).view(-1, 1, 1)
    figures["label"] = median(lambda: label_components(mask)) * per_image
    figures["statistics"] = median(lambda: statistics_by_scatter(flat, mask)) * per_image
    pinned = torch.empty(maps.shape, dtype=maps.dtype, pin_memory=device.type == "cuda")
    figures["maps_to_pageable"] = median(lambda: maps.cpu()) * per_image
    figures["maps_to_pinned"] = median(lambda: pinned.copy_(maps, non_blocking=True)) * per_image
    n = len(batch.jpegs)
    streams = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in batch.jpegs]
    figures["nvjpeg"] = median(lambda: _decode_jpegs(streams, device)) * per_image
    figures["decode"] = (
        median(lambda: decode_to_canvases(batch.jpegs, [1] * n, [True] * n, size, "letterbox", device)) * per_image
    )
    return {"grid": grid, "maps_mib": maps.numel() * 4 / 2**20, "us_per_image": figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="on the CPU, a batch of 2 at 64 pixels, seconds")
    parser.add_argument("--assets", type=Path, default=ASSETS, help="the carried folder (photos/, site/)")
    parser.add_argument("--output", type=Path, default=Path("bench-device-stages.json"))
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.smoke else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.smoke:
        torch.set_num_threads(1)  # as `camray.bench.device --smoke`: a busy CPU makes threads wait on each other
    use_carried_packages(args.assets)
    photos = photo_jpegs(args.assets / "photos")
    batch_size, size = (2, 64) if args.smoke else (256, 224)
    report = {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "batch": batch_size,
        "input_size": size,
        "setting": "bf16 channels-last eager, the balanced preset",
        "models": {name: measure_model(name, photos, batch_size, size, device) for name in MODELS},
    }
    for name, figures in report["models"].items():
        numbers = figures["us_per_image"]
        parts = ", ".join(f"{step} {value:.1f}" for step, value in numbers["steps"].items())
        print(f"{name} (us per image): forward {numbers['forward']:.1f}, predictor {numbers['predictor']:.1f}")
        print(f"  steps: {parts}")
        others = [key for key in numbers if key not in ("forward", "predictor", "steps")]
        alone = ", ".join(f"{key} {numbers[key]:.1f}" for key in others)
        print(f"  alone: {alone}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
