"""The predictor: decoded images -> top-k predictions, class maps, boxes and a pseudo-mask per image.

`Annotator` is the compute (plain PyTorch, usable without Ray); `Predictor` is the Ray Data actor callable
around it: model and device set up once in `__init__`, numpy batch in, Arrow rows out.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camray.cam.boxes import Components, components_from_maps
from camray.cam.maps import normalize_maps, resample_regions
from camray.cam.methods import MapExtractor
from camray.cam.tiling import canvas_side, cut_tiles, stitch_maps, tile_layout, tile_stride
from camray.cam.tokens import to_grid
from camray.config import BoxConfig, CamConfig, JobConfig, TilingConfig
from camray.image.device_decode import decode_to_canvases
from camray.io.schema import ROWS
from camray.io.sources import S3Settings
from camray.models import LoadedModel, load_model, resolve_layer
from camray.models.fold import fold_batch_norms
from camray.result_rows import AnnotatedBatch, RowContext, result_table

logger = logging.getLogger(__name__)


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
    return torch.bfloat16  # "auto" and "bf16": bf16 keeps fp32's range, so logits never overflow


def uses_refine_layer(cam: CamConfig, tiling: TilingConfig | None) -> bool:
    """Whether the maps need the mean activation of `cam.refine_layer`: refined maps, `layer` fusion of the
    tiles, or the whole image's refined map for the tiled images whose box is large."""
    if cam.refine:
        return True
    if tiling is None or not tiling.enabled:
        return False
    return tiling.fusion == "layer" or tiling.whole_image_above_area is not None


def decode_side(tiling: TilingConfig, input_size: int) -> int:
    """Side of the canvas the read tasks decode to: the model's input, or the tiled mode's larger canvas."""
    return canvas_side(input_size, tiling.grid, tiling.overlap) if tiling.enabled else input_size


class Annotator:
    """Runs one model over batches of canvases (see `camray.image.decode.DecodedImage`).

    It readies `loaded.module` for inference in place: eval mode, batch norms folded into their convolutions
    (`camray.models.fold`), moved to the device in the chosen memory format. With `tiling` enabled, canvases
    are `decode_side(tiling, input_size)` pixels wide and the maps come from the tiled mode (`_annotate_tiled`).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        cam: CamConfig,
        boxes: BoxConfig,
        input_size: int,
        device: torch.device,
        precision: str = "auto",
        channels_last: bool = True,
        compile_model: bool = False,
        tiling: TilingConfig | None = None,
    ) -> None:
        self.spec = loaded.spec
        self.tiling = tiling if tiling is not None and tiling.enabled else None
        self.canvas_size = decode_side(self.tiling, input_size) if self.tiling else input_size
        self.cam_config = cam
        self.box_config = boxes
        self.input_size = input_size
        self.device = device
        self.top_k = min(cam.top_k, len(self.spec.categories))
        self.autocast_dtype = _autocast_dtype(device, precision)
        # Channels-last runs convolutions a third faster on the CPU too (oneDNN), and a permuted uint8 NHWC
        # batch already has that layout, so preparing the input copies nothing but the dtype.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        refine_path = (cam.refine_layer or self.spec.refine_layer) if uses_refine_layer(cam, self.tiling) else None
        if self.tiling is not None and refine_path is None and uses_refine_layer(cam, self.tiling):
            raise ValueError(
                f"`tiling.fusion` `layer` and `tiling.whole_image_above_area` need a `cam.refine_layer`, and "
                f"{self.spec.name} has none; set one"
            )
        module = loaded.module.eval()
        fold_batch_norms(module, keep=[self.spec.target_layer, *([refine_path] if refine_path else [])])
        module = module.to(device=device, memory_format=self.memory_format)
        self.extractor = MapExtractor(
            module, self.spec, cam.method, compile_model=compile_model and device.type == "cuda"
        )
        self.refine_block = resolve_layer(module, refine_path, "cam.refine_layer") if refine_path else None
        std = torch.tensor(self.spec.std, device=device).view(1, 3, 1, 1)
        self.scale = 1.0 / (255.0 * std)  # (pixel / 255 - mean) / std as one multiply-add
        self.shift = -torch.tensor(self.spec.mean, device=device).view(1, 3, 1, 1) / std

    @property
    def method(self) -> str:
        return self.extractor.method

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
        self, x: Tensor, keep_activation: bool, classes: Callable[[Tensor], Tensor] | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """logits, raw maps and class ids of `x`, and the refining block's mean activation if asked for."""
        activation: list[Tensor] = []

        def keep_first(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            if not activation:  # Score-CAM's masked forwards come later; the clean forward is the first
                grid = to_grid(output.detach(), self.spec.refine_layout, self.spec.prefix_tokens)
                activation.append(grid.float().relu().mean(-3, keepdim=True))

        hooked = keep_activation and self.refine_block is not None
        handle = self.refine_block.register_forward_hook(keep_first) if hooked else None
        try:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                logits, raw_maps, class_ids = self.extractor(x, self.top_k, classes)
        finally:
            if handle is not None:
                handle.remove()
        return logits, raw_maps, class_ids, activation[0] if activation else None

    def annotate(self, pixels: Tensor, valid_wh: Tensor) -> AnnotatedBatch:
        """pixels (Tensor[B, S, S, 3], uint8), valid_wh (Tensor[B, 2]) -> `AnnotatedBatch`."""
        if self.tiling is not None:
            return self._annotate_tiled(pixels, valid_wh)
        x = self.prepare(pixels, valid_wh)
        logits, raw_maps, class_ids, activation = self._forward(x, self.cam_config.refine)
        scores = torch.softmax(logits.float(), dim=1).gather(1, class_ids)
        valid_wh = valid_wh.to(self.device)
        maps = self._whole_image_maps(raw_maps.float(), valid_wh, x.shape[-1])
        if activation is None and self.cam_config.refine:  # no finer block (a ViT): every image keeps the plain map
            every = torch.ones(maps.shape[0], dtype=torch.bool, device=maps.device)
            return self._boxed(class_ids, scores, *self._maps_keeping_plain(maps, maps, every))
        if activation is None:
            return self._boxed(class_ids, scores, maps)
        refined = self._refine(maps, activation, valid_wh, x.shape[-1])
        maps, thresholds = self._maps_keeping_plain(maps, refined, self._keeps_plain(scores))
        return self._boxed(class_ids, scores, maps, thresholds)

    def _annotate_tiled(self, pixels: Tensor, valid_wh: Tensor) -> AnnotatedBatch:
        """The tiled mode: the canvas downscaled to the input size gives the top-k classes and the coarse maps;
        its overlapping tiles, all in one forward pass, give the same classes' maps at the canvas's scale, which
        are stitched over each image (mean where tiles overlap) and fused with the coarse maps. Images that keep
        the plain CAM (`cam.plain_above_score`) send no tiles through the model.

        Classes stay the whole image's top-k: admitting a class that a tile scores far above the whole image
        was measured (README, Localization) and left box accuracy unchanged while adding false boxes.

        With `tiling.whole_image_above_area`, a tiled image whose top-1 box turns out large takes the whole image's
        refined map instead (`_large_objects_from_whole_image`)."""
        assert self.tiling is not None
        size = self.input_size
        canvas = self.prepare(pixels, valid_wh)
        device_wh = valid_wh.to(self.device)
        x = F.interpolate(canvas, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        small_wh = device_wh.float() * (size / self.canvas_size)
        whole_image_fallback = self.tiling.whole_image_above_area is not None
        logits, raw_maps, class_ids, activation = self._forward(
            x.contiguous(memory_format=self.memory_format), self.cam_config.refine or whole_image_fallback
        )
        scores = torch.softmax(logits.float(), dim=1).gather(1, class_ids)
        plain = self._whole_image_maps(raw_maps.float(), small_wh, size)
        refined = None if activation is None else self._refine(plain, activation, small_wh, size)
        coarse = refined if self.cam_config.refine and refined is not None else plain
        fused = coarse.clone()  # written into below; `coarse` may be `plain` itself
        keep = self._keeps_plain(scores)
        tiled = torch.nonzero(~keep).flatten()
        if tiled.numel():
            fine, layer = self._stitched_tile_maps(canvas[tiled], device_wh[tiled], class_ids[tiled], plain.shape[-1])
            fused[tiled] = self._fuse(coarse[tiled], fine, layer)
        maps, thresholds = self._maps_keeping_plain(plain, fused, keep)
        components = None
        if whole_image_fallback and refined is not None and tiled.numel():
            maps, thresholds, components = self._large_objects_from_whole_image(maps, thresholds, refined, ~keep)
        return self._boxed(class_ids, scores, maps, thresholds, components)

    def _large_objects_from_whole_image(
        self, maps: Tensor, thresholds: Tensor, whole: Tensor, tiled: Tensor
    ) -> tuple[Tensor, Tensor, Components | None]:
        """The images of `tiled` (B,) bool whose top-1 box from `maps` covers `tiling.whole_image_above_area` of
        the image or more, with their maps from `whole` (B, K, R, R) at `tiling.whole_image_threshold`; and the
        components of `maps` where no image changed (None otherwise).

        Tiles and the tiles' finer activation sharpen a map to the most active part of its object: the whole of
        a small object, but a large one's face or insignia. The box the tiles give says which of the two an
        image holds; a large one is boxed better by the whole image's refined map (README, Localization)."""
        assert self.tiling is not None and self.tiling.whole_image_above_area is not None
        b, k = maps.shape[:2]
        components = self._components(maps, thresholds)
        large = tiled & (top1_box_fraction(components, b, k, maps.shape[-1]) >= self.tiling.whole_image_above_area)
        if not bool(large.any()):
            return maps, thresholds, components
        thresholds = thresholds.view(b, k).clone()
        thresholds[large] = self.tiling.whole_image_threshold
        return torch.where(large.view(-1, 1, 1, 1), whole, maps), thresholds.flatten(), None

    def _keeps_plain(self, scores: Tensor) -> Tensor:
        """(B,) bool: the images whose top-1 class scores at least `cam.plain_above_score`."""
        if self.cam_config.plain_above_score is None:
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

    def _stitched_tile_maps(
        self, canvas: Tensor, valid_wh: Tensor, class_ids: Tensor, grid: int
    ) -> tuple[Tensor, Tensor | None]:
        """The maps of classes `class_ids` (B, K) from each canvas's overlapping tiles, stitched over its image on
        a `grid` x `grid` grid (B, K, R, R, normalised), and the stitched mean activation of the refining block
        (B, 1, R, R) for `layer` fusion."""
        assert self.tiling is not None
        size = self.input_size
        image_of, offsets = tile_layout(
            [(int(w), int(h)) for w, h in valid_wh.tolist()], size, tile_stride(size, self.tiling.overlap)
        )
        tiles = cut_tiles(canvas, image_of, offsets, size).contiguous(memory_format=self.memory_format)
        image_of = image_of.to(self.device)
        tile_classes = class_ids[image_of]
        keep_layer = self.tiling.fusion == "layer"
        _, tile_raw, _, tile_activation = self._forward(tiles, keep_layer, lambda _logits: tile_classes)
        images = canvas.shape[0]
        fine = normalize_maps(stitch_maps(tile_raw.float(), image_of, offsets, valid_wh, size, grid, images))
        layer = None
        if tile_activation is not None:
            layer = normalize_maps(stitch_maps(tile_activation, image_of, offsets, valid_wh, size, grid, images))
        return fine, layer

    def _fuse(self, coarse: Tensor, fine: Tensor, layer: Tensor | None) -> Tensor:
        """One map per class from the coarse and the stitched maps, per `tiling.fusion`."""
        assert self.tiling is not None
        if self.tiling.fusion == "max":
            maps = torch.maximum(coarse, fine)
        else:
            maps = normalize_maps(coarse * fine)
            if layer is not None:
                maps = normalize_maps(maps * layer.pow(self.cam_config.refine_power))
        return maps

    def _boxed(
        self,
        class_ids: Tensor,
        scores: Tensor,
        maps: Tensor,
        thresholds: Tensor | None = None,
        components: Components | None = None,
    ) -> AnnotatedBatch:
        thresholds = self._thresholds(maps) if thresholds is None else thresholds
        components = self._components(maps, thresholds) if components is None else components
        b, k = class_ids.shape
        return AnnotatedBatch(
            class_ids.cpu(), scores.cpu(), maps.cpu(), thresholds.view(b, k).cpu(), _to_cpu(components)
        )

    def _whole_image_maps(self, raw: Tensor, valid_wh: Tensor, size: int, grid: int | None = None) -> Tensor:
        """Resamples (bilinear) each map's valid region onto a grid covering the original image, normalised.
        The grid is `cam.upsample` x the map's side unless given."""
        _, _, h, w = raw.shape
        grid = grid or max(h, w) * self.cam_config.upsample
        extent = valid_wh.float() * torch.tensor([w / size, h / size], device=raw.device)
        return normalize_maps(resample_regions(raw, extent, grid))

    def _refine(self, maps: Tensor, activation: Tensor, valid_wh: Tensor, size: int) -> Tensor:
        """Class maps x (normalised mean activation of the refining block) ** power, renormalised.

        The class map says which object; the finer, class-agnostic activation says where its edges are. This is
        the multiplicative fusion of shallow features of SPOL (Wei et al., CVPR 2021), without training."""
        fine = self._whole_image_maps(activation, valid_wh, size, grid=maps.shape[-1])
        return normalize_maps(maps * fine.pow(self.cam_config.refine_power))

    def _thresholds(self, maps: Tensor) -> Tensor:
        """The foreground threshold of each map, flattened to (B * K,)."""
        flat = maps.flatten(2).flatten(0, 1)
        config = self.box_config
        if config.threshold_rule == "percentile":
            return config.threshold * torch.quantile(flat, config.percentile / 100.0, dim=1)
        return torch.full((flat.shape[0],), config.threshold, device=maps.device)

    def _components(self, maps: Tensor, thresholds: Tensor) -> Components:
        b, k, r, _ = maps.shape
        config = self.box_config
        return components_from_maps(
            maps.reshape(b * k, r, r),
            thresholds,
            min_area=config.min_area_fraction * r * r,
            max_per_map=config.max_boxes_per_class,
        )


def top1_box_fraction(components: Components, images: int, k: int, grid: int) -> Tensor:
    """(images,) float: the share of its image that each image's first box of its top-1 class covers, 0 where
    it has none. Maps are ``b * k + class rank`` as in `AnnotatedBatch`, on `grid` x `grid` grids covering the
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


def _to_cpu(components: Components) -> Components:
    return Components(*(getattr(components, f).cpu() for f in Components.__dataclass_fields__))


class Predictor:
    """Ray Data actor: one model per actor, built once; batches of decoded rows in, result rows out."""

    def __init__(
        self,
        config: dict[str, Any],
        run_id: str,
        input_size: int,
        s3: dict[str, Any],
        cpu_threads: int | None = None,
    ) -> None:
        job = JobConfig.model_validate(config)  # plain data crossed the process boundary: validate again
        self.run_id = run_id
        self.fingerprint = job.fingerprint()
        self.model_name = job.model.name
        device = pick_device(job.model.device)
        # Ray pins OMP_NUM_THREADS to the actor's logical CPUs (1): on a CPU node that idles the rest.
        self.cpu_threads = cpu_threads if device.type == "cpu" else None
        self._use_cpu_threads()
        loaded = load_model(job.model, S3Settings(**s3))
        self.annotator = Annotator(
            loaded,
            job.cam,
            job.boxes,
            input_size,
            device,
            job.model.precision,
            job.model.channels_last,
            job.model.compile,
            job.tiling,
        )
        self.resize = job.model.resize
        # Lowered (never raised) when the device runs out of memory; None means the whole batch at once.
        self.batch_cap: int | None = None
        self.row_context = RowContext(
            model=self.model_name,
            method=self.annotator.method,
            config_fingerprint=self.fingerprint,
            run_id=run_id,
            categories=pa.array(loaded.spec.categories, pa.string()),
            write_masks=job.boxes.masks,
        )
        logger.info("predictor ready: %s on %s, method %s", self.model_name, device, self.annotator.method)

    def _use_cpu_threads(self) -> None:
        # OpenMP keeps the thread count per calling thread, and Ray Data may call the actor from another
        # thread than the one that built it: without this, batches run on one core whatever `__init__` set.
        if self.cpu_threads and torch.get_num_threads() != self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        self._use_cpu_threads()
        ok = np.flatnonzero(batch["error_type"] == "")
        rows: list[dict[str, Any]] = [self._error_row(batch, i) for i in np.flatnonzero(batch["error_type"] != "")]
        if not ok.size:
            return pa.Table.from_pylist(rows, schema=ROWS)
        if "encoded" in batch:
            index, pixels, valid = self._decode_here(batch, ok, rows)
        else:
            index = ok
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
            if self.annotator.device.type == "cuda":
                pixels = pixels.pin_memory()
            valid = torch.from_numpy(np.stack([batch["valid_width"][ok], batch["valid_height"][ok]], axis=1))
        tables: list[pa.Table] = []
        self._annotate_in_chunks(batch, index, pixels, valid, tables, rows)
        return pa.concat_tables([pa.Table.from_pylist(rows, schema=ROWS), *tables])

    def _annotate_in_chunks(
        self,
        batch: dict[str, np.ndarray],
        index: np.ndarray,
        pixels: Tensor,
        valid: Tensor,
        tables: list[pa.Table],
        rows: list[dict[str, Any]],
    ) -> None:
        start = 0
        while start < index.size:  # the cap may drop mid-batch (out of memory): read it again for each chunk
            chunk = slice(start, start + (self.batch_cap or index.size))
            self._annotate_isolating(batch, index[chunk], pixels[chunk], valid[chunk], tables, rows)
            start = chunk.stop

    def _annotate_isolating(
        self,
        batch: dict[str, np.ndarray],
        index: np.ndarray,
        pixels: Tensor,
        valid: Tensor,
        tables: list[pa.Table],
        rows: list[dict[str, Any]],
    ) -> None:
        """Annotates images `index`, appending result tables and error rows; nothing of the batch is lost.

        A batch that raises is split in halves until the image that breaks it is alone: it becomes an error row
        with stage `predict`, its neighbours get results (log2(batch) extra passes at most per culprit). A CUDA
        out-of-memory error halves this actor's batch size for good and retries, since the next batch of the
        same size would fail the same way."""
        try:
            tables.append(self._annotate_table(batch, index, pixels, valid))
            return
        except torch.cuda.OutOfMemoryError as exc:
            if index.size == 1:
                rows.append(self._error_row(batch, index[0], "predict", *_describe(exc)))
                return
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.batch_cap = max(1, index.size // 2)
            logger.warning(
                "out of device memory at a batch of %d images; batches of %d from now on", index.size, self.batch_cap
            )
            self._annotate_in_chunks(batch, index, pixels, valid, tables, rows)
            return
        except Exception as exc:
            if index.size == 1:
                rows.append(self._error_row(batch, index[0], "predict", *_describe(exc)))
                return
            logger.warning(
                "a batch of %d failed (%s); splitting it to isolate the image", index.size, _describe(exc)[0]
            )
        half = (index.size + 1) // 2
        for part in (slice(0, half), slice(half, None)):
            self._annotate_isolating(batch, index[part], pixels[part], valid[part], tables, rows)

    def _decode_here(
        self, batch: dict[str, np.ndarray], ok: np.ndarray, rows: list[dict[str, Any]]
    ) -> tuple[np.ndarray, Tensor, Tensor]:
        """`runtime.decode: device`: decodes the batch's bytes on the model's device; failures become rows."""
        try:
            canvases = decode_to_canvases(
                [batch["encoded"][i] for i in ok],
                [int(batch["orientation"][i]) for i in ok],
                [bool(batch["device_jpeg"][i]) for i in ok],
                self.annotator.canvas_size,
                self.resize,
                self.annotator.device,
            )
        except Exception as exc:  # a device fault: every image of the batch is reported, none is lost
            logger.warning("decoding a batch of %d on %s failed", ok.size, self.annotator.device, exc_info=True)
            rows += [self._error_row(batch, i, "decode", *_describe(exc)) for i in ok]
            return ok[:0], torch.empty(0), torch.empty(0)
        for position, error in canvases.failed.items():
            rows.append(self._error_row(batch, ok[position], "decode", error.error_type, error.message))
        return ok[canvases.decoded], canvases.pixels, canvases.valid_wh

    def _annotate_table(
        self, batch: dict[str, np.ndarray], index: np.ndarray, pixels: Tensor, valid: Tensor
    ) -> pa.Table:
        out = self.annotator.annotate(pixels, valid)
        images = {
            name: batch[name][index]
            for name in ("image_uri", "source_version", "content_sha256", "width", "height", "io_retries")
        }
        return result_table(out, images, self.row_context)

    def _error_row(
        self,
        batch: dict[str, np.ndarray],
        index: int,
        stage: str | None = None,
        error_type: str | None = None,
        message: str | None = None,
    ) -> dict[str, Any]:
        """An errors-table row; without `stage` and the rest, the read task's own error columns."""
        return {
            "image_uri": batch["image_uri"][index],
            "source_version": batch["source_version"][index],
            "stage": stage or str(batch["error_stage"][index]),
            "error_type": error_type or str(batch["error_type"][index]),
            "message": message if message is not None else str(batch["error_message"][index]),
            "run_id": self.run_id,
            "model": self.model_name,
            "config_fingerprint": self.fingerprint,
            "io_retries": int(batch["io_retries"][index]),
        }


def _describe(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, "".join(traceback.format_exception_only(exc)).strip()
