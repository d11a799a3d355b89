"""The plain mode's box stage at fixed shapes, with no host sync: one CUDA graph a batch.

From one forward pass's raw class maps to each map's boxes: resampled onto the whole-image grid, refined by the
finer block's activation, kept plain where the model is sure, thresholded, labelled into 8-connected
components and measured. The annotator's eager steps (`camray.annotator`, `camray.cam.boxes`) are the
reference; this is the same maths with every shape fixed by the batch's, so that the whole stage can be
compiled (`torch.compile` fuses it into a few dozen kernels) and replayed as one CUDA graph. Two steps of the
eager path wait for the host, and change here:

- **labelling** runs a fixed number of rounds (`LABEL_ROUNDS`) of hooking and pointer jumping instead of
  max-pool rounds until nothing changes, and says on the device whether it settled (`converged`); a batch
  that did not is boxed again by the eager path (`CapturedBoxStage` leaves that to its caller);
- **the statistics** keep each map's `max_per_map` heaviest components in fixed slots (`DenseComponents`)
  instead of compacting the present ones; the host compacts them after the one copy back (`compact`).

Conventions are `camray.cam.boxes`': maps `(N, H, W)`, boxes ``(x0, y0, x1, y1)`` in pixel-edge coordinates of
the grid, 8-connected components ordered by mass within their map.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from camray.cam.boxes import Components
from camray.cam.maps import normalize_maps, resample_regions

# Rounds of hooking and pointer jumping. Measured: the maps of real photos settle in 2 to 4 (docs/device-benchmark.md);
# 56 x 56 snakes, spirals and random mazes, one component winding through the whole grid, in 6
# (tests/cam/test_box_stage.py). A map that needs more is reported by `converged` and boxed by the eager path.
LABEL_ROUNDS = 6
# Batches are padded to a power of two, at least this many images: a handful of shapes, each captured once.
MIN_BUCKET = 16


@dataclass(frozen=True)
class BoxStageSettings:
    """The `cam` and `boxes` settings the stage reads, as plain numbers (a captured graph bakes them in)."""

    upsample: int  # the grid's side is the raw maps' side times this (`cam.upsample`)
    refine_power: float  # refined map: normalise(map x activation ** power) (`cam.refine_power`)
    plain_threshold: float  # the threshold of the maps kept plain (`cam.plain_threshold`)
    threshold_rule: str  # `max_fraction` or `percentile` (`boxes.threshold_rule`)
    threshold: float
    percentile: float
    min_area_fraction: float  # of the grid's pixels; a map's heaviest component is kept whatever its area
    max_per_map: int
    label_rounds: int = LABEL_ROUNDS


@dataclass(frozen=True)
class DenseComponents:
    """Each map's `P = max_per_map` heaviest components in fixed slots, heaviest first.

    kept (Tensor[N, P], bool): the slot holds a component that `components_from_maps` keeps.
    boxes (Tensor[N, P, 4]), area (Tensor[N, P]), mass (Tensor[N, P]), peak (Tensor[N, P]): as in `Components`;
        meaningless where not `kept`.
    """

    kept: Tensor
    boxes: Tensor
    area: Tensor
    mass: Tensor
    peak: Tensor


@dataclass(frozen=True)
class StageOutput:
    """maps (Tensor[B, K, R, R]) normalised; thresholds (Tensor[B * K]); components over the `B * K` maps;
    converged (Tensor[], bool): the labelling settled within its rounds (else the components are not final)."""

    maps: Tensor
    thresholds: Tensor
    components: DenseComponents
    converged: Tensor

    def tensors(self) -> list[Tensor]:
        """Every tensor, in a fixed order (`from_tensors` reads them back)."""
        dense = [getattr(self.components, field.name) for field in fields(DenseComponents)]
        return [self.maps, self.thresholds, *dense, self.converged]

    @staticmethod
    def from_tensors(tensors: list[Tensor]) -> StageOutput:
        maps, thresholds, *dense, converged = tensors
        return StageOutput(maps, thresholds, DenseComponents(*dense), converged)

    def first(self, images: int) -> StageOutput:
        """The outputs of the first `images` images (the rest were padding)."""
        k = self.maps.shape[1]
        dense = [tensor[: images * k] for tensor in self.tensors()[2:-1]]
        return StageOutput(self.maps[:images], self.thresholds[: images * k], DenseComponents(*dense), self.converged)


def _masked_max_pool(values: Tensor, mask: Tensor, fill: float) -> Tensor:
    """(N, H, W): the largest of `values` over each pixel's 3 x 3 neighbourhood of `mask` pixels (itself included),
    `fill` where no pixel of the neighbourhood is in `mask`."""
    masked = torch.where(mask, values, fill)
    return F.max_pool2d(masked.unsqueeze(1), kernel_size=3, stride=1, padding=1).squeeze(1)


def _round(parents: Tensor, mask: Tensor) -> Tensor:
    """One round of `label_components_bounded`: hooking, then two pointer jumps. parents (Tensor[N, H * W])."""
    n, h, w = mask.shape
    flat_mask = mask.view(n, h * w)
    grown = torch.where(flat_mask, _masked_max_pool(parents.view(n, h, w), mask, -1.0).view(n, h * w), parents)
    parents = torch.maximum(parents.scatter_reduce(1, parents.long(), grown, reduce="amax"), grown)
    for _ in range(2):
        parents = parents.gather(1, parents.long())
    return parents


def _settled(parents: Tensor, mask: Tensor) -> Tensor:
    """Tensor[] bool: no foreground pixel has a larger pointer in its neighbourhood than its own."""
    n, h, w = mask.shape
    grown = _masked_max_pool(parents.view(n, h, w), mask, -1.0).view(n, h * w)
    return (grown == parents).logical_or_(~mask.view(n, h * w)).all()


def label_components_bounded(
    mask: Tensor, rounds: int = LABEL_ROUNDS, steps: Steps | None = None
) -> tuple[Tensor, Tensor]:
    """Labels the 8-connected components of each map in `rounds` fixed rounds, with no host sync.

    Args:
        mask (Tensor[N, H, W]): bool foreground.
        steps: the round and the check to run (compiled ones, say); the eager functions of this module if None.

    Returns:
        parents (Tensor[N, H * W], float32): on each foreground pixel, once converged, the largest flat index
            of its component's pixels (`camray.cam.boxes.label_components`' label minus one); on the background,
            the pixel's own flat index.
        converged (Tensor[], bool): whether every component settled, which makes the parents final.

    Each foreground pixel holds a pointer to a pixel of its own component, never to one of smaller index. A round
    hooks (the pixel a pointer names takes the largest pointer of the naming pixel's neighbourhood) and then
    jumps twice (each pointer takes the pointer of the pixel it names). Both keep the invariant, so once no
    neighbourhood holds a larger pointer, every component holds one value: its largest index. Hooking carries the
    largest index across a component in a few rounds where max-pooling alone needs one round per pixel of its
    longest path (56 for the photos measured, over 1,500 for a snake filling a 56 x 56 map). The background
    points at itself, so that its scatters and gathers touch only its own slot.
    """
    if mask.dim() != 3 or mask.dtype != torch.bool:
        raise ValueError(f"`mask` must be a bool tensor of shape (N, H, W), got {mask.dtype} {tuple(mask.shape)}")
    n, h, w = mask.shape
    if h * w >= 2**24:
        raise ValueError(f"`mask` maps of {h}x{w} are too large to label exactly in float32")
    steps = steps or EAGER_STEPS
    parents = torch.arange(h * w, device=mask.device, dtype=torch.float32).repeat(n, 1)
    for _ in range(rounds):
        parents = steps.round(parents, mask)
    return parents, steps.settled(parents, mask)


# Below every key of `_order_key` (whose smallest, for a mass of -inf, is about -0.996 * 2**63); not int64's
# minimum itself, a literal that code generators have mishandled.
ABSENT = -(2**63) + 1


def _order_key(mass: Tensor, slots: int) -> Tensor:
    """(N, S) int64 keys that sort like (`mass` descending, slot ascending): the eager path's order, made total,
    so that `topk` picks exactly the components a stable sort would. `mass` (Tensor[N, S]) float32."""
    bits = mass.view(torch.int32)  # never -0.0, which would order below 0.0: sums start at +0.0
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()  # int order = float order
    slot = torch.arange(slots, device=mass.device).view(1, slots)
    return ordered * 2**32 + (2**32 - 1 - slot)


def _statistics(
    maps: Tensor, mask: Tensor, parents: Tensor, min_area: float, max_per_map: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`dense_components`' fields, in their order.

    Each pixel adds to the slot its pointer names: a component's pixels to its largest index's, a background pixel
    to its own, which no component owns (their area, counted from the mask, stays 0). So no other statistic needs
    masking, and the statistics that reduce alike go in one scatter: sums (area, mass), minima (x0, y0), maxima
    (x1, y1, peak)."""
    n, h, w = maps.shape
    slots = h * w
    device = maps.device
    position = torch.arange(slots, device=device)
    xs = (position % w).float().expand(n, slots)
    ys = torch.div(position, w, rounding_mode="floor").float().expand(n, slots)
    values = maps.reshape(n, slots).float()

    def reduce(sources: list[Tensor], how: str, start: float) -> Tensor:
        """(N, len(sources), S): each source reduced into the slots its pixels' pointers name."""
        index = parents.long().unsqueeze(1).expand(n, len(sources), slots)
        initial = torch.full((n, len(sources), slots), start, device=device)
        return initial.scatter_reduce(2, index, torch.stack(sources, dim=1), reduce=how)

    sums = reduce([mask.view(n, slots).float(), values], "sum", 0.0)
    lows = reduce([xs, ys], "amin", float(max(h, w)))
    highs = reduce([xs, ys, values], "amax", float("-inf"))
    present = sums[:, 0] > 0
    key = torch.where(present, _order_key(sums[:, 1], slots), ABSENT)
    top = key.topk(max_per_map, dim=1).indices  # (N, P), heaviest first

    def pick(reduced: Tensor) -> Tensor:
        return reduced.gather(2, top.unsqueeze(1).expand(n, reduced.shape[1], max_per_map))

    (area, mass), (x0, y0), (x1, y1, peak) = pick(sums).unbind(1), pick(lows).unbind(1), pick(highs).unbind(1)
    rank = torch.arange(max_per_map, device=device).view(1, max_per_map)
    kept = present.gather(1, top) & ((rank == 0) | (area >= min_area))
    return kept, torch.stack([x0, y0, x1 + 1, y1 + 1], dim=-1), area, mass, peak


def dense_components(
    maps: Tensor, mask: Tensor, parents: Tensor, min_area: float, max_per_map: int, steps: Steps | None = None
) -> DenseComponents:
    """Statistics of the components that `label_components_bounded` found, each map's `max_per_map` heaviest in
    fixed slots; `maps` (Tensor[N, H, W]) float32, `mask` (Tensor[N, H, W]) bool, `parents` (Tensor[N, H * W])."""
    return DenseComponents(*(steps or EAGER_STEPS).statistics(maps, mask, parents, min_area, max_per_map))


def _whole_image_maps(raw: Tensor, valid_wh: Tensor, size: int, grid: int) -> Tensor:
    """`Annotator._whole_image_maps` without a host-to-device copy: each map's valid region resampled onto the
    `grid` x `grid` grid, normalised."""
    _, _, h, w = raw.shape
    extent = torch.stack([valid_wh[:, 0].float() * (w / size), valid_wh[:, 1].float() * (h / size)], dim=1)
    return normalize_maps(resample_regions(raw, extent, grid))


def _maps(
    raw_maps: Tensor,
    activation: Tensor | None,
    keep_plain: Tensor,
    valid_wh: Tensor,
    size: int,
    settings: BoxStageSettings,
) -> tuple[Tensor, Tensor, Tensor]:
    """The maps (B, K, R, R), their thresholds (B * K,) and foreground (B * K, R, R) of `plain_box_stage`."""
    b, k, h, w = raw_maps.shape
    grid = max(h, w) * settings.upsample
    maps = _whole_image_maps(raw_maps, valid_wh, size, grid)
    if activation is not None:
        fine = _whole_image_maps(activation, valid_wh, size, grid)
        refined = normalize_maps(maps * fine.pow(settings.refine_power))
        maps = torch.where(keep_plain.view(b, 1, 1, 1), maps, refined)
    flat = maps.flatten(2).flatten(0, 1)
    if settings.threshold_rule == "percentile":
        thresholds = settings.threshold * torch.quantile(flat, settings.percentile / 100.0, dim=1)
    else:
        thresholds = torch.full((b * k,), settings.threshold, device=maps.device)
    thresholds = torch.where(keep_plain.view(b, 1).expand(b, k).reshape(b * k), settings.plain_threshold, thresholds)
    return maps, thresholds, maps.reshape(b * k, grid, grid) >= thresholds.view(-1, 1, 1)


@dataclass(frozen=True)
class Steps:
    """The stage's pieces. `compiled_steps` compiles them one by one: the labelling's round is one small graph
    run `label_rounds` times rather than a graph with every round unrolled, which took inductor minutes."""

    maps: Callable[..., tuple[Tensor, Tensor, Tensor]]
    round: Callable[[Tensor, Tensor], Tensor]
    settled: Callable[[Tensor, Tensor], Tensor]
    statistics: Callable[..., tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]


EAGER_STEPS = Steps(_maps, _round, _settled, _statistics)


def compiled_steps() -> Steps:
    """`EAGER_STEPS` through `torch.compile` (inductor; one compile per shape, in the first call)."""

    def compiled(function: Callable) -> Callable:
        return torch.compile(function, dynamic=False, fullgraph=True)

    return Steps(*(compiled(getattr(EAGER_STEPS, field.name)) for field in fields(Steps)))


def plain_box_stage(
    raw_maps: Tensor,
    activation: Tensor | None,
    keep_plain: Tensor,
    valid_wh: Tensor,
    size: int,
    settings: BoxStageSettings,
    steps: Steps | None = None,
) -> StageOutput:
    """The plain mode's maps, thresholds and components of one batch, at fixed shapes and with no host sync.

    Args:
        raw_maps (Tensor[B, K, h, w]): float32 class maps of one forward pass.
        activation (Tensor[B, 1, h', w'], optional): the refining block's mean activation; None: plain maps.
        keep_plain (Tensor[B]): bool; these images keep their plain maps, boxed at `plain_threshold`.
        valid_wh (Tensor[B, 2]): each canvas's valid region, on the maps' device.
        size: the canvases' side.
        steps: the pieces to run; this module's eager functions if None.
    """
    steps = steps or EAGER_STEPS
    maps, thresholds, mask = steps.maps(raw_maps, activation, keep_plain, valid_wh, size, settings)
    parents, converged = label_components_bounded(mask, settings.label_rounds, steps)
    grid = maps.shape[-1]
    boxed = maps.reshape(-1, grid, grid)
    min_area = settings.min_area_fraction * grid * grid
    components = dense_components(boxed, mask, parents, min_area, settings.max_per_map, steps)
    return StageOutput(maps, thresholds, components, converged)


def compact(dense: DenseComponents) -> Components:
    """The kept slots as `Components`, in the eager path's order: by map, heaviest first (any device)."""
    n, slots = dense.kept.shape
    map_index = torch.arange(n, device=dense.kept.device).view(n, 1).expand(n, slots)
    kept = dense.kept
    return Components(map_index[kept], dense.boxes[kept], dense.area[kept], dense.mass[kept], dense.peak[kept])


def bucket(images: int) -> int:
    """The padded batch size of `images` images: the next power of two, at least `MIN_BUCKET`."""
    return max(MIN_BUCKET, 1 << max(0, images - 1).bit_length())


class CaptureFailed(RuntimeError):
    """The stage could not be compiled or captured for a shape; the caller boxes such batches eagerly."""


@dataclass
class _Captured:
    inputs: list[Tensor | None]
    outputs: list[Tensor]
    graph: torch.cuda.CUDAGraph | None
    steps: Steps


class CapturedBoxStage:
    """`plain_box_stage` for one setting, padded to a few batch sizes (`bucket`) and, on a GPU, captured as one
    CUDA graph per padded size: a batch's box stage is then one graph launch, whatever its kernel count.

    With `compiled`, `torch.compile` fuses the stage's pieces first (inductor; each padded size compiles once, in
    its first call); a size that fails to compile is captured uncompiled (`uncompiled` says why). The graphs are
    this object's own (`torch.cuda.CUDAGraph`), not `mode="reduce-overhead"`'s, whose graph trees are per thread
    and assert when another thread calls them (pytorch/pytorch#123177): the predictor actor computes from two
    threads. One call at a time: a lock guards the graphs' static buffers, and the outputs of a call are views of
    them, valid until the next call.

    On the CPU it runs the same padded function, compiled or not, without a graph (how the tests check it).
    """

    WARMUP_CALLS = 2  # before a capture, on a side stream: compiles, and lets cuBLAS make its workspace

    def __init__(self, settings: BoxStageSettings, device: torch.device, compiled: bool = False) -> None:
        self.settings = settings
        self.device = device
        self.compiled = compiled
        self._steps = compiled_steps() if compiled else EAGER_STEPS
        self._captured: dict[tuple, _Captured | CaptureFailed] = {}
        self.uncompiled: list[str] = []  # why a padded size runs uncompiled
        self._lock = threading.Lock()

    def __call__(
        self, raw_maps: Tensor, activation: Tensor | None, keep_plain: Tensor, valid_wh: Tensor, size: int
    ) -> StageOutput:
        """`plain_box_stage` of the batch; raises `CaptureFailed` if its padded size cannot be compiled or captured
        (and again for every later batch of that size)."""
        images = raw_maps.shape[0]
        padded = bucket(images)
        inputs = [raw_maps, activation, keep_plain, valid_wh]
        key = (padded, size, *((tuple(t.shape[1:]), t.dtype) if t is not None else None for t in inputs))
        with self._lock, torch.inference_mode():
            captured = self._captured.get(key)
            if captured is None:
                captured = self._capture(key, inputs, padded, size)
            if isinstance(captured, CaptureFailed):
                raise captured
            for static, given in zip(captured.inputs, inputs, strict=True):
                if static is not None and given is not None:
                    static[:images].copy_(given)
                    static[images:].zero_()  # zero maps have no foreground under the default rule
            if captured.graph is not None:
                captured.graph.replay()
                outputs = captured.outputs
            else:
                outputs = self._run(captured.inputs, size, captured.steps).tensors()
            return StageOutput.from_tensors(outputs).first(images)

    def failures(self) -> list[str]:
        """Why each padded size that could not be captured could not."""
        return [str(failed) for failed in self._captured.values() if isinstance(failed, CaptureFailed)]

    def _run(self, inputs: list[Tensor | None], size: int, steps: Steps) -> StageOutput:
        raw, activation, keep, valid_wh = inputs
        assert raw is not None and keep is not None and valid_wh is not None
        return plain_box_stage(raw, activation, keep, valid_wh, size, self.settings, steps)

    def _capture(self, key: tuple, inputs: list[Tensor | None], padded: int, size: int) -> _Captured | CaptureFailed:
        static = [
            None if t is None else torch.zeros((padded, *t.shape[1:]), dtype=t.dtype, device=self.device)
            for t in inputs
        ]
        failed: CaptureFailed | None = None
        for steps in dict.fromkeys([self._steps, EAGER_STEPS]):  # compiled (if asked), else uncompiled
            try:
                captured = self._capture_steps(static, size, steps)
            except torch.cuda.OutOfMemoryError:
                raise  # the predictor halves its batches; a smaller padded size may fit
            except Exception as exc:
                stage = "compiled" if steps is not EAGER_STEPS else "uncompiled"
                failed = CaptureFailed(f"the {stage} box stage could not be captured at {padded} images: {exc}")
                failed.__cause__ = exc
                if steps is not EAGER_STEPS:
                    self.uncompiled.append(str(failed))
                continue
            self._captured[key] = captured
            return captured
        assert failed is not None
        self._captured[key] = failed
        return failed

    def _capture_steps(self, static: list[Tensor | None], size: int, steps: Steps) -> _Captured:
        if self.device.type != "cuda":
            self._run(static, size, steps)  # compiles here, where a failure is caught, not in the first batch
            return _Captured(static, [], None, steps)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_CALLS):
                self._run(static, size, steps)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # Thread-local: the decoding thread beside this one may allocate or synchronise meanwhile.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            outputs = self._run(static, size, steps).tensors()
        return _Captured(static, outputs, graph, steps)
