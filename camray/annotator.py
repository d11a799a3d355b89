"""The compute of the predictor: uint8 canvases -> top-k predictions, and class maps and boxes per image.

`Annotator` readies one model for inference and runs one of its modes, chosen once in its constructor:
`PlainMode` (each canvas is the model's input), `TiledMode` (a larger canvas, downscaled for the classes and
cut into overlapping tiles for finer maps) or, for several objects an image, `camray.detect_mode.DetectMode`
(the whole image and its tiles as windows that propose and box their own classes). It is plain PyTorch: the
settings it reads are attributes of the config's sections, which it never validates or imports at run time, so the
device benchmark runs it on a host without pydantic or Ray. `camray.predictor` wraps it as the Ray Data actor.

Every mode maps the kept classes (`cam.classes`, `camray.cam.classes`): the predicted ones (the top-k, above
`cam.min_score`), the image's given labels, whatever their rank (`annotate(..., given=...)`), or both. Their
number differs per image; the batch's tensors hold the largest, and a `kept` mask says which slots are an image's
own. Predictions (the top-k by score) are returned beside them, since the two are no longer one to one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from camray.cam.box_source import boxes_from_label_maps
from camray.cam.box_stage import BoxStageSettings, CapturedBoxStage, CaptureFailed, StageOutput, compact
from camray.cam.boxes import Components, components_from_maps, components_of_selected
from camray.cam.classes import ClassChoice, choose_classes
from camray.cam.dense_crf import CrfSettings, cell_colours
from camray.cam.label_map_boxes import label_map_components
from camray.cam.label_maps import crf_label_maps, own_background
from camray.cam.label_maps import label_maps as argmax_label_maps
from camray.cam.layers import resolve_layer
from camray.cam.maps import normalize_maps, resample_regions
from camray.cam.methods import MapExtractor
from camray.cam.tiling import canvas_side, cut_tiles, stitch_maps, tile_layout, tile_stride
from camray.cam.tokens import to_grid
from camray.detect_mode import DetectMode
from camray.models.fold import fold_batch_norms
from camray.models.setup import refine_layer_of

if TYPE_CHECKING:  # read as attributes only: the annotator runs where pydantic is not installed
    from camray.config import BoxConfig, CamConfig, MasksConfig, TilingConfig
    from camray.models import LoadedModel

logger = logging.getLogger(__name__)

# The dense CRF's label maps are resampled to a grid this much finer than the maps' (112 x 112 cells for a 7 x 7
# map): their edges follow the photo's more closely than the grid's steps (docs/localization.md).
CRF_UPSAMPLE = 2

# `cam.min_score`'s default for a sigmoid head: a multi-label classifier's decision threshold.
SIGMOID_MIN_SCORE = 0.5


@dataclass(frozen=True)
class AnnotatedBatch:
    """Per-image outputs on the CPU. `maps` cover each whole original image on an R x R grid. Scores are the
    head's probabilities (softmax or sigmoid, `model.head`).

    predicted_ids (Tensor[B, P]), predicted_scores (Tensor[B, P]): the top-k predictions, best first.
    class_ids (Tensor[B, K]), scores (Tensor[B, K]): the kept classes, best first, then padding.
    kept (Tensor[B, K], bool): which slots are the image's own; the rest are padding, never written.
    given (Tensor[B, K], bool): which kept classes are among the image's labels: known to be there, their boxes
    are scored by their map alone (`camray.result_rows`).
    maps (Tensor[B, K, R, R]): normalised to [0, 1].
    thresholds (Tensor[B, K]): the foreground threshold each map was boxed at.
    components: boxes in grid pixel-edge coordinates, of kept maps only; `map_index` is ``b * K + k``.
    label_maps (Tensor[B, Rh, Rw], uint8): each image's label map over its kept classes
    (`camray.cam.label_maps`: 0 background, ``k + 1`` slot `k`, 255 undecided), covering the whole image; None
    where the run writes none (`masks.label_maps`).
    """

    predicted_ids: Tensor
    predicted_scores: Tensor
    class_ids: Tensor
    scores: Tensor
    kept: Tensor
    given: Tensor
    maps: Tensor
    thresholds: Tensor
    components: Components
    label_maps: Tensor | None = None


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("`model.device` is `cuda` but this worker sees no GPU")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "auto" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.float16  # a GPU before Ampere emulates bf16
    return torch.bfloat16  # bf16 keeps fp32's range, so logits never overflow


def box_stage_settings(cam: CamConfig, boxes: BoxConfig) -> BoxStageSettings:
    """The settings of the plain mode's box stage, read from the config's sections."""
    return BoxStageSettings(
        upsample=cam.upsample,
        refine_power=cam.refine_power,
        plain_threshold=cam.plain_threshold,
        threshold_rule=boxes.threshold_rule,
        threshold=boxes.threshold,
        percentile=boxes.percentile,
        min_area_fraction=boxes.min_area_fraction,
        max_per_map=boxes.max_boxes_per_class,
    )


def decode_side(tiling: TilingConfig, input_size: int) -> int:
    """Side of the canvas the read tasks decode to: the model's input, or the tiled mode's larger canvas."""
    return canvas_side(input_size, tiling.grid, tiling.overlap) if tiling.enabled else input_size


@dataclass(frozen=True)
class _Forward:
    """One forward pass: logits (B, N), raw maps (B, K, h, w) of class ids (B, K), the classes chosen where the
    pass chose them (None where they were given, as for tiles) and, where asked for, the refining block's mean
    activation (B, 1, h', w')."""

    logits: Tensor
    raw_maps: Tensor
    class_ids: Tensor
    choice: ClassChoice | None
    activation: Tensor | None


class Annotator:
    """Runs one model over batches of canvases (see `camray.image.decode.DecodedImage`).

    It readies `loaded.module` for inference in place: eval mode, batch norms folded into their convolutions
    (`camray.models.fold`), moved to the device in the chosen memory format. Its method, layers, head and input
    size are the resolved setup's (`loaded.setup`, `camray.models.setup`), checked there. With `tiling` enabled,
    canvases are `decode_side(tiling, input_size)` pixels wide and the maps come from `TiledMode`; otherwise from
    `PlainMode`. The two share everything here but how a batch becomes maps.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        cam: CamConfig,
        boxes: BoxConfig,
        device: torch.device,
        precision: str = "auto",
        channels_last: bool = True,
        compile_model: bool = False,
        tiling: TilingConfig | None = None,
        capture_boxes: bool | None = None,
        masks: MasksConfig | None = None,
    ) -> None:
        self.spec = loaded.spec
        self.setup = setup = loaded.setup
        tiling = tiling if tiling is not None and tiling.enabled else None
        self.cam_config = cam
        self.box_config = boxes
        # Label maps of the kept classes (`masks.label_maps`); None: the run writes none.
        self.mask_config = masks if masks is not None and getattr(masks, "label_maps", False) else None
        self.crf = CrfSettings()
        self.input_size = setup.input_size
        self.device = device
        self.top_k = min(cam.top_k, setup.num_classes)
        self.classes = getattr(cam, "classes", "predicted")  # settings made before given labels: predicted
        min_score = getattr(cam, "min_score", None)
        self.min_score = SIGMOID_MIN_SCORE if min_score is None and setup.head == "sigmoid" else min_score
        # Boxes of the kept classes' label-map regions instead of their thresholded maps (`boxes.source`).
        self.boxes_from_label_maps = self.mask_config is not None and boxes_from_label_maps(
            getattr(boxes, "source", "maps"),  # settings made before the field: the maps
            True,
            self.mask_config.refine,
            self.classes,
            setup.head,
        )
        self.autocast_dtype = _autocast_dtype(device, precision)
        # Channels-last runs convolutions a third faster on the CPU too (oneDNN), and a permuted uint8 NHWC
        # batch already has that layout, so preparing the input copies nothing but the dtype.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        refine_path = refine_layer_of(self.spec, cam, tiling)
        module = loaded.module.eval()
        fold_batch_norms(module, keep=[self.spec.target_layer, *([refine_path] if refine_path else [])])
        module = module.to(device=device, memory_format=self.memory_format)
        self.refine_block = resolve_layer(module, refine_path, "cam.refine_layer") if refine_path else None
        self.extractor = MapExtractor(
            module,
            self.spec,
            setup.method,
            compile_model=compile_model and device.type == "cuda",
            capture=() if self.refine_block is None else (self.refine_block,),
        )
        std = torch.tensor(self.spec.std, device=device).view(1, 3, 1, 1)
        self.scale = 1.0 / (255.0 * std)  # (pixel / 255 - mean) / std as one multiply-add
        self.shift = -torch.tensor(self.spec.mean, device=device).view(1, 3, 1, 1) / std
        self.mode: PlainMode | TiledMode | DetectMode = (
            PlainMode(self)
            if tiling is None
            else DetectMode(self, tiling)
            if getattr(tiling, "mode", "stitch") == "windows"  # settings made before the mode existed: stitch
            else TiledMode(self, tiling)
        )
        self.canvas_size = self.mode.canvas_size
        # The plain mode's box stage as one CUDA graph a batch (`camray.cam.box_stage`), compiled with the model;
        # by default on a GPU only: on the CPU, OpenCV's labelling is faster than any number of tensor rounds.
        self.box_stage: CapturedBoxStage | None = None
        captures = capture_boxes or (capture_boxes is None and device.type == "cuda")
        if isinstance(self.mode, PlainMode) and captures and not self.boxes_from_label_maps:
            self.box_stage = CapturedBoxStage(
                box_stage_settings(cam, boxes), device, compiled=compile_model and device.type == "cuda"
            )
        self._stage_failures: set[str] = set()
        self.unsettled_batches = 0  # boxed by the eager steps: their labelling needed more than the stage's rounds
        # One batch at a time: the predictor actor calls from two threads, one decoding while the other computes.
        self._lock = threading.Lock()

    @property
    def method(self) -> str:
        return self.extractor.method

    def annotate(self, pixels: Tensor, valid_wh: Tensor, given: Tensor | None = None) -> AnnotatedBatch:
        """pixels (Tensor[B, S, S, 3], uint8), valid_wh (Tensor[B, 2]), given (Tensor[B, G], long: each image's
        labels, padded with -1; None: none) -> `AnnotatedBatch`. `given` is read under `cam.classes` `given` and
        `both`."""
        with self._lock:
            return self.mode.annotate(pixels, valid_wh, given)

    def probabilities(self, logits: Tensor) -> Tensor:
        """(B, N) logits -> the head's probabilities: softmax across the classes, or each class's sigmoid."""
        if self.setup.head == "sigmoid":
            return torch.sigmoid(logits.float())
        return torch.softmax(logits.float(), dim=1)

    def choose(self, probabilities: Tensor, given: Tensor | None, ranking: Tensor | None = None) -> ClassChoice:
        """The predictions and kept classes of a batch (`camray.cam.classes.choose_classes`) under this run's
        `cam.classes`, `cam.top_k` and `cam.min_score`."""
        return choose_classes(probabilities, self.top_k, self.classes, self.min_score, given, ranking)

    def prepare(self, pixels: Tensor, valid_wh: Tensor) -> Tensor:
        """uint8 canvases (B, S, S, 3) -> normalised float input, letterbox padding at the mean (zero)."""
        pixels = pixels.to(self.device, non_blocking=True)
        x = torch.addcmul(self.shift, pixels.permute(0, 3, 1, 2), self.scale)  # one pass, uint8 in, float out
        size = x.shape[-1]
        if x.device.type == "cpu":  # a slice per padded image: touches only the padding
            for index, (width, height) in enumerate(valid_wh.tolist()):
                if width < size:
                    x[index, :, :, width:] = 0.0
                if height < size:
                    x[index, :, height:, :] = 0.0
        else:  # one fused kernel for the whole batch instead of a launch per image
            valid_wh = valid_wh.to(x.device, non_blocking=True)
            positions = torch.arange(size, device=x.device)
            cols = positions.view(1, 1, 1, size) < valid_wh[:, 0].view(-1, 1, 1, 1)
            rows = positions.view(1, 1, size, 1) < valid_wh[:, 1].view(-1, 1, 1, 1)
            x.mul_(cols & rows)
        return x.contiguous(memory_format=self.memory_format)

    def _forward(
        self, x: Tensor, keep_activation: bool, classes: Tensor | None = None, given: Tensor | None = None
    ) -> _Forward:
        """One pass over `x`; the refining block's mean activation with it if `keep_activation` and the model
        has such a block. `classes` (B, K), if given, are the classes to map; otherwise the pass chooses them
        (`choose`, with the images' labels `given`)."""
        layers = (self.refine_block,) if keep_activation and self.refine_block is not None else ()
        chosen: list[ClassChoice] = []

        def pick(logits: Tensor) -> Tensor:
            if classes is not None:
                return classes
            chosen.append(self.choose(self.probabilities(logits), given))
            return chosen[0].class_ids

        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            out = self.extractor.extract(x, self.top_k, pick, layers)
            activation = None
            if out.layers:
                grid = to_grid(out.layers[0], self.spec.refine_layout, self.spec.prefix_tokens)
                activation = grid.float().relu().mean(-3, keepdim=True)
        return _Forward(out.logits, out.maps, out.class_ids, chosen[0] if chosen else None, activation)

    def _boxed(
        self,
        choice: ClassChoice,
        maps: Tensor,
        thresholds: Tensor | None = None,
        components: Components | None = None,
        label_maps: Tensor | None = None,
    ) -> AnnotatedBatch:
        thresholds = self._thresholds(maps) if thresholds is None else thresholds
        if components is None and self.boxes_from_label_maps:
            assert label_maps is not None  # boxes come from label maps only where the run writes them
            config = self.box_config
            components = label_map_components(
                maps, label_maps, choice.kept, config.min_area_fraction, config.max_boxes_per_class
            )
        elif components is None:
            components = self._components(maps, thresholds, choice)
        b, k = choice.class_ids.shape
        fields = [getattr(components, name) for name in Components.__dataclass_fields__]
        labelled = [] if label_maps is None else [label_maps]
        host = _to_host(
            [
                choice.predicted_ids,
                choice.predicted_scores,
                choice.class_ids,
                choice.scores,
                choice.kept,
                choice.given,
                maps,
                thresholds.view(b, k),
                *labelled,
                *fields,
            ]
        )
        label_host = host.pop(8) if labelled else None
        return AnnotatedBatch(*host[:8], Components(*host[8:]), label_host)

    def _boxed_by_stage(
        self, forward: _Forward, valid_wh: Tensor, size: int, label_maps: Tensor | None
    ) -> AnnotatedBatch | None:
        """The plain mode's maps, thresholds and boxes from `self.box_stage`, the same as its eager steps give; None
        where the stage cannot be captured at this batch's size (the eager steps box the batch then)."""
        assert self.box_stage is not None
        choice = forward.choice
        assert choice is not None
        b, k = choice.class_ids.shape
        if forward.activation is None:  # `cam.refine` without a finer block (a ViT) keeps every map plain
            keep = torch.full((b,), bool(self.cam_config.refine), device=valid_wh.device)
        else:
            keep = self._keeps_plain(choice.predicted_scores)
        try:
            out = self.box_stage(forward.raw_maps.float(), forward.activation, keep, valid_wh, size)
        except CaptureFailed as exc:
            if str(exc) not in self._stage_failures:  # once per batch size, not once per batch
                self._stage_failures.add(str(exc))
                logger.warning("%s; boxing such batches with the eager steps", exc)
            return None
        chosen = [
            choice.predicted_ids,
            choice.predicted_scores,
            choice.class_ids,
            choice.scores,
            choice.kept,
            choice.given,
        ]
        labelled = [] if label_maps is None else [label_maps]
        host = _to_host([*chosen, *labelled, *out.tensors()])
        label_host = host.pop(len(chosen)) if labelled else None
        stage = StageOutput.from_tensors(host[len(chosen) :])
        fields = list(Components.__dataclass_fields__)
        if bool(stage.converged):
            components = compact(stage.components)
        else:  # a component wound further than the stage's rounds reach: the eager labelling runs to the end
            self.unsettled_batches += 1
            logger.info(
                "a batch's components needed more than %d labelling rounds", self.box_stage.settings.label_rounds
            )
            eager = self._components(out.maps, out.thresholds, choice)
            components = Components(*_to_host([getattr(eager, name) for name in fields]))
        if not choice.every_slot_kept:  # the stage boxes every slot at its fixed shape; padding is never written
            own = host[4].flatten()[components.map_index]
            components = Components(*(getattr(components, name)[own] for name in fields))
        return AnnotatedBatch(*host[: len(chosen)], stage.maps, stage.thresholds.view(b, k), components, label_host)

    def _whole_image_maps(self, raw: Tensor, valid_wh: Tensor, size: int, grid: int | None = None) -> Tensor:
        """Resamples (bilinear) each map's valid region onto a grid covering the original image, normalised.
        The grid is `cam.upsample` x the map's side unless given."""
        _, _, h, w = raw.shape
        grid = grid or max(h, w) * self.cam_config.upsample
        extent = valid_wh.float() * torch.tensor([w / size, h / size], device=raw.device)
        return normalize_maps(resample_regions(raw, extent, grid))

    def _refine(
        self, maps: Tensor, activation: Tensor, valid_wh: Tensor, size: int, power: float | None = None
    ) -> Tensor:
        """Class maps x (normalised mean activation of the refining block) ** power (`cam.refine_power` unless
        given), renormalised.

        The class map says which object; the finer, class-agnostic activation says where its edges are. This is
        the multiplicative fusion of shallow features of SPOL (Wei et al., CVPR 2021), without training."""
        fine = self._whole_image_maps(activation, valid_wh, size, grid=maps.shape[-1])
        return normalize_maps(maps * fine.pow(self.cam_config.refine_power if power is None else power))

    def _label_scores(self, plain: Tensor, activation: Tensor | None, valid_wh: Tensor, size: int) -> Tensor:
        """(B, K, R, R): the maps label maps are made of, for every image alike: the geometric mean of each plain
        map and its refined map (normalised, the map refined at half `cam.refine_power`) where the mode refines,
        else the plain map. Refinement sharpens a map to an object's most active part, which boxes small objects
        well and cuts large ones down; the plain map spreads past the object. Their mean labels better than either
        (docs/localization.md), and the confidence gate that picks one of them for boxes does not apply."""
        if activation is None:
            return plain
        return self._refine(plain, activation, valid_wh, size, self.cam_config.refine_power / 2)

    def label_maps_of(self, scores: Tensor, kept: Tensor, pixels: Tensor, valid_wh: Tensor) -> Tensor | None:
        """Each image's label map (B, R, R) uint8 from its kept classes' `scores` (B, K, R, R) and its canvas
        (`pixels` (B, S, S, 3) uint8, of which `valid_wh` (B, 2) is the image), under `masks`; None where the run
        writes none."""
        config = self.mask_config
        if config is None:
            return None
        kept = kept.to(scores.device)
        background = own_background(scores, kept) if config.background == "auto" else config.background
        if config.refine == "crf":
            colours = cell_colours(pixels.to(scores.device), valid_wh, scores.shape[-1])
            return crf_label_maps(
                scores, kept, background, colours, valid_wh, self.crf, config.ignore_below, CRF_UPSAMPLE
            )
        return argmax_label_maps(scores, kept, background, config.ignore_below)

    def _keeps_plain(self, scores: Tensor) -> Tensor:
        """(B,) bool: the images whose top-1 prediction (`scores[:, 0]`, of (B, P) best first) scores at least
        `cam.plain_above_score`; none with a sigmoid head, whose independent probabilities say nothing of how an
        image frames its objects: it scores a small object in a scene as surely as a close-up, and the gate kept
        its plain maps for nearly every image (docs/localization-multi.md)."""
        if self.cam_config.plain_above_score is None or self.setup.head == "sigmoid":
            return torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
        return scores[:, 0] >= self.cam_config.plain_above_score

    def _maps_keeping_plain(self, plain: Tensor, sharpened: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """The sharpened maps (refined or tiled), but the plain ones for the images `keep` (B,) marks, and the
        maps' thresholds (B * K,): `cam.plain_threshold` for the plain ones."""
        maps = torch.where(keep.view(-1, 1, 1, 1), plain, sharpened)
        b, k = maps.shape[:2]
        thresholds = self._thresholds(maps).view(b, k)
        thresholds[keep] = self.cam_config.plain_threshold
        return maps, thresholds.flatten()

    def _thresholds(self, maps: Tensor) -> Tensor:
        """The foreground threshold of each map, flattened to (B * K,)."""
        flat = maps.flatten(2).flatten(0, 1)
        config = self.box_config
        if config.threshold_rule == "percentile":
            return config.threshold * torch.quantile(flat, config.percentile / 100.0, dim=1)
        return torch.full((flat.shape[0],), config.threshold, device=maps.device)

    def _components(self, maps: Tensor, thresholds: Tensor, choice: ClassChoice) -> Components:
        """The boxes of the kept maps (B * K flattened, as `thresholds`); padding is never boxed."""
        b, k, r, _ = maps.shape
        config = self.box_config
        flat = maps.reshape(b * k, r, r)
        if choice.every_slot_kept:
            return components_from_maps(
                flat, thresholds, min_area=config.min_area_fraction * r * r, max_per_map=config.max_boxes_per_class
            )
        return components_of_selected(
            flat,
            thresholds,
            choice.kept.flatten(),
            min_area=config.min_area_fraction * r * r,
            max_per_map=config.max_boxes_per_class,
        )


class PlainMode:
    """Each canvas is the model's input: one forward pass gives the classes and their maps, refined by the
    refining block's activation where `cam.refine` asks (except for the images `cam.plain_above_score` keeps
    plain)."""

    def __init__(self, annotator: Annotator) -> None:
        self.annotator = annotator
        self.canvas_size = annotator.input_size

    def annotate(self, pixels: Tensor, valid_wh: Tensor, given: Tensor | None = None) -> AnnotatedBatch:
        a = self.annotator
        x = a.prepare(pixels, valid_wh)
        forward = a._forward(x, a.cam_config.refine, given=given)
        choice = forward.choice
        assert choice is not None
        valid_wh = valid_wh.to(a.device)
        size = x.shape[-1]
        plain = label_maps = None
        if a.mask_config is not None:
            plain = a._whole_image_maps(forward.raw_maps.float(), valid_wh, size)
            scores = a._label_scores(plain, forward.activation, valid_wh, size)
            label_maps = a.label_maps_of(scores, choice.kept, pixels, valid_wh)
        if a.box_stage is not None and (boxed := a._boxed_by_stage(forward, valid_wh, size, label_maps)):
            return boxed
        if plain is None:
            plain = a._whole_image_maps(forward.raw_maps.float(), valid_wh, size)
        if forward.activation is None and a.cam_config.refine:  # no finer block (a ViT): the plain map for all
            every = torch.ones(plain.shape[0], dtype=torch.bool, device=plain.device)
            return a._boxed(choice, *a._maps_keeping_plain(plain, plain, every), label_maps=label_maps)
        if forward.activation is None:
            return a._boxed(choice, plain, label_maps=label_maps)
        refined = a._refine(plain, forward.activation, valid_wh, size)
        maps, thresholds = a._maps_keeping_plain(plain, refined, a._keeps_plain(choice.predicted_scores))
        return a._boxed(choice, maps, thresholds, label_maps=label_maps)


class TiledMode:
    """The canvas downscaled to the input size gives the top-k classes and the coarse maps; its overlapping
    tiles, all in one forward pass, give the same classes' maps at the canvas's scale, which are stitched over
    each image (mean where tiles overlap) and fused with the coarse maps. Images that keep the plain CAM
    (`cam.plain_above_score`) send no tiles through the model.

    Classes are the whole image's kept classes (its top-k, or its labels): admitting a class that a tile scores
    far above the whole image was measured (docs/research/localization.md) and left box accuracy unchanged while
    adding false boxes.

    With `tiling.whole_image_above_area`, a tiled image whose top-1 box turns out large takes the whole image's
    refined map instead (`_large_objects_from_whole_image`)."""

    def __init__(self, annotator: Annotator, tiling: TilingConfig) -> None:
        self.annotator = annotator
        self.tiling = tiling
        self.canvas_size = decode_side(tiling, annotator.input_size)

    def annotate(self, pixels: Tensor, valid_wh: Tensor, given: Tensor | None = None) -> AnnotatedBatch:
        a = self.annotator
        size = a.input_size
        canvas = a.prepare(pixels, valid_wh)
        device_wh = valid_wh.to(a.device)
        x = F.interpolate(canvas, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        small_wh = device_wh.float() * (size / self.canvas_size)
        above_area = self.tiling.whole_image_above_area
        forward = a._forward(
            x.contiguous(memory_format=a.memory_format), a.cam_config.refine or above_area is not None, given=given
        )
        choice = forward.choice
        assert choice is not None
        plain = a._whole_image_maps(forward.raw_maps.float(), small_wh, size)
        refined = None if forward.activation is None else a._refine(plain, forward.activation, small_wh, size)
        coarse = refined if a.cam_config.refine and refined is not None else plain
        fused = coarse.clone()  # written into below; `coarse` may be `plain` itself
        keep = a._keeps_plain(choice.predicted_scores)
        tiled = torch.nonzero(~keep).flatten()
        if tiled.numel():
            fine, layer = self._stitched_tile_maps(
                canvas[tiled], device_wh[tiled], forward.class_ids[tiled], plain.shape[-1]
            )
            fused[tiled] = self._fuse(coarse[tiled], fine, layer)
        label_maps = None
        if a.mask_config is not None:
            # The tiled images' fused maps, the others' as the plain mode makes them (docs/localization.md).
            scores = a._label_scores(plain, forward.activation, small_wh, size)
            scores = torch.where(keep.view(-1, 1, 1, 1), scores, fused)
            label_maps = a.label_maps_of(scores, choice.kept, pixels, valid_wh)
        maps, thresholds = a._maps_keeping_plain(plain, fused, keep)
        components = None
        if above_area is not None and refined is not None and tiled.numel() and not a.boxes_from_label_maps:
            maps, thresholds, components = self._large_objects_from_whole_image(
                maps, thresholds, refined, ~keep, above_area, choice
            )
        return a._boxed(choice, maps, thresholds, components, label_maps)

    def _large_objects_from_whole_image(
        self, maps: Tensor, thresholds: Tensor, whole: Tensor, tiled: Tensor, above_area: float, choice: ClassChoice
    ) -> tuple[Tensor, Tensor, Components | None]:
        """The images of `tiled` (B,) bool whose top-1 box from `maps` covers `above_area` of the image or more,
        with their maps from `whole` (B, K, R, R) at `tiling.whole_image_threshold`; and the components of
        `maps` where no image changed (None otherwise).

        Tiles and the tiles' finer activation sharpen a map to the most active part of its object: the whole of
        a small object, but a large one's face or insignia. The box the tiles give says which of the two an
        image holds; a large one is boxed better by the whole image's refined map (docs/localization.md)."""
        b, k = maps.shape[:2]
        components = self.annotator._components(maps, thresholds, choice)
        large = tiled & (top1_box_fraction(components, b, k, maps.shape[-1]) >= above_area)
        if not bool(large.any()):
            return maps, thresholds, components
        thresholds = thresholds.view(b, k).clone()
        thresholds[large] = self.tiling.whole_image_threshold
        return torch.where(large.view(-1, 1, 1, 1), whole, maps), thresholds.flatten(), None

    def _stitched_tile_maps(
        self, canvas: Tensor, valid_wh: Tensor, class_ids: Tensor, grid: int
    ) -> tuple[Tensor, Tensor | None]:
        """The maps of classes `class_ids` (B, K) from each canvas's overlapping tiles, stitched over its image on
        a `grid` x `grid` grid (B, K, R, R, normalised), and the stitched mean activation of the refining block
        (B, 1, R, R) for `layer` fusion."""
        a = self.annotator
        size = a.input_size
        image_of, offsets = tile_layout(
            [(int(w), int(h)) for w, h in valid_wh.tolist()], size, tile_stride(size, self.tiling.overlap)
        )
        tiles = cut_tiles(canvas, image_of, offsets, size).contiguous(memory_format=a.memory_format)
        image_of = image_of.to(a.device)
        forward = a._forward(tiles, self.tiling.fusion == "layer", class_ids[image_of])
        images = canvas.shape[0]
        fine = normalize_maps(stitch_maps(forward.raw_maps.float(), image_of, offsets, valid_wh, size, grid, images))
        layer = None
        if forward.activation is not None:
            layer = normalize_maps(stitch_maps(forward.activation, image_of, offsets, valid_wh, size, grid, images))
        return fine, layer

    def _fuse(self, coarse: Tensor, fine: Tensor, layer: Tensor | None) -> Tensor:
        """One map per class from the coarse and the stitched maps, per `tiling.fusion`."""
        if self.tiling.fusion == "max":
            return torch.maximum(coarse, fine)
        maps = normalize_maps(coarse * fine)
        if layer is not None:
            maps = normalize_maps(maps * layer.pow(self.annotator.cam_config.refine_power))
        return maps


def top1_box_fraction(components: Components, images: int, k: int, grid: int) -> Tensor:
    """(images,) float: the share of its image that each image's first box of its first kept class covers, 0 where
    it has none. Maps are ``b * k + slot`` as in `AnnotatedBatch`, on `grid` x `grid` grids covering the
    whole image; the first box is the component with the highest peak, as rows order boxes (ties: the first)."""
    top = components.map_index % k == 0
    image = components.map_index[top] // k
    peak = components.peak[top].float()
    boxes = components.boxes[top].float()
    fraction = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / float(grid * grid)
    best_peak = torch.full((images,), -torch.inf, device=peak.device).scatter_reduce(0, image, peak, "amax")
    position = torch.arange(image.numel(), device=peak.device)
    is_best = peak == best_peak[image]
    none = image.numel()
    first = torch.full((images,), none, device=peak.device, dtype=torch.long).scatter_reduce(
        0, image[is_best], position[is_best], "amin"
    )
    found = first < none
    out = torch.zeros(images, device=peak.device)
    out[found] = fraction[first[found]]
    return out


def _to_host(tensors: list[Tensor]) -> list[Tensor]:
    """The tensors in host memory. From a GPU, into pinned buffers (PyTorch caches them), every copy queued
    before one wait: a copy into pageable memory is staged by the driver and waits on its own, several times
    slower for the batch's maps (15 MiB at batch 256)."""
    if tensors[0].device.type != "cuda":
        return [tensor.cpu() for tensor in tensors]
    host = [torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True) for tensor in tensors]
    for target, tensor in zip(host, tensors, strict=True):
        target.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return host
