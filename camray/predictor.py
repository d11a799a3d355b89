"""The predictor: decoded images -> top-k predictions, class maps, boxes and a label map per image.

`Predictor` is the Ray Data actor callable around `camray.annotator.Annotator` (the compute, plain PyTorch):
config validated and model loaded once in `__init__` from the run's resolved setup, numpy batch in, Arrow rows
out. It resolves each image's label tokens against the model's classes (`camray.models.labels`): a label that
names no class, or an image without labels where `cam.classes` is `given`, is an error row of stage `labels`.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from camray.annotator import Annotator, decode_side, pick_device, top1_box_fraction
from camray.config import JobConfig
from camray.image.device_decode import DeviceLoader
from camray.io.schema import ROWS
from camray.io.sources import S3Settings
from camray.metrics import timed_batch
from camray.models import LabelResolver, ModelSetup, UnknownLabel, load_model, uses_refine_layer
from camray.result_rows import RowContext, result_table

# The annotator's names that callers of the actor (the runner, the benchmarks) read from here too.
__all__ = ["Annotator", "Predictor", "decode_side", "pick_device", "top1_box_fraction", "uses_refine_layer"]

logger = logging.getLogger(__name__)


class Predictor:
    """Ray Data actor: one model per actor, built once; batches of decoded rows in, result rows out."""

    def __init__(
        self,
        config: dict[str, Any],
        setup: dict[str, Any],
        run_id: str,
        s3: dict[str, Any],
        cpu_threads: int | None = None,
    ) -> None:
        """`config` is the job's config and `setup` its resolved model (`ModelSetup.to_plain`), as plain data."""
        job = JobConfig.model_validate(config)  # plain data crossed the process boundary: validate again
        resolved = ModelSetup.from_plain(setup)
        self.run_id = run_id
        self.fingerprint = job.fingerprint()
        self.model_name = job.model.name
        device = pick_device(job.model.device)
        # Ray pins OMP_NUM_THREADS to the actor's logical CPUs (1): on a CPU node that idles the rest.
        self.cpu_threads = cpu_threads if device.type == "cpu" else None
        self._use_cpu_threads()
        loaded = load_model(resolved, S3Settings(**s3))
        self.labels = LabelResolver(resolved.class_names)
        self.classes = job.cam.classes
        self.annotator = Annotator(
            loaded,
            job.cam,
            job.boxes,
            device,
            job.model.precision,
            job.model.channels_last,
            job.model.compile,
            job.tiling,
            job.runtime.capture_boxes,
            job.masks,
        )
        # Ray Data hands a GPU actor two batches at once (`camray.planning`): one thread loads its batch onto the
        # device on this loader's stream while the other computes; the annotator takes one batch at a time.
        self.loader = DeviceLoader(device)
        self.resize = job.model.resize
        # Lowered (never raised) when the device runs out of memory; None means the whole batch at once.
        self.batch_cap: int | None = None
        self.row_context = RowContext(
            model=self.model_name,
            method=self.annotator.method,
            config_fingerprint=self.fingerprint,
            run_id=run_id,
            categories=pa.array(resolved.class_names, pa.string()),
            write_masks=job.masks.top1,
            write_ignore=job.masks.label_maps and job.masks.ignore_below is not None,
        )
        logger.info("predictor ready: %s on %s, method %s", self.model_name, device, self.annotator.method)

    def _use_cpu_threads(self) -> None:
        # OpenMP keeps the thread count per calling thread, and Ray Data may call the actor from another
        # thread than the one that built it: without this, batches run on one core whatever `__init__` set.
        if self.cpu_threads and torch.get_num_threads() != self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)

    @timed_batch
    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        self._use_cpu_threads()
        ok = np.flatnonzero(batch["error_type"] == "")
        rows: list[dict[str, Any]] = [self._error_row(batch, i) for i in np.flatnonzero(batch["error_type"] != "")]
        batch = dict(batch)
        batch["given"], ok = self._given(batch, ok, rows)
        if not ok.size:
            return pa.Table.from_pylist(rows, schema=ROWS)
        if "encoded" in batch:
            index, pixels, valid = self._decode_here(batch, ok, rows)
        else:
            index = ok
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
            if self.annotator.device.type == "cuda":
                pixels = pixels.pin_memory()
                try:  # copied up beside the other thread's compute
                    pixels = self.loader.hand_over(self.loader.upload(pixels))
                except torch.cuda.OutOfMemoryError:
                    pass  # no room now: the annotator copies them itself, within its out-of-memory handling
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

        A batch whose model forward raises is split in halves until the image that breaks it is alone: it becomes
        an error row with stage `predict`, its neighbours get results (log2(batch) extra passes at most per
        culprit). A CUDA out-of-memory error halves this actor's batch size for good and retries, since the next
        batch of the same size would fail the same way. Anything else that raises is camray's own failure (maps,
        boxes, rows), the same for every image: it fails the batch, and the run, at once."""
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
            if not _raised_in_a_module(exc):
                raise
            if index.size == 1:
                rows.append(self._error_row(batch, index[0], "predict", *_describe(exc)))
                return
            logger.warning(
                "a batch of %d failed (%s); splitting it to isolate the image", index.size, _describe(exc)[0]
            )
        half = (index.size + 1) // 2
        for part in (slice(0, half), slice(half, None)):
            self._annotate_isolating(batch, index[part], pixels[part], valid[part], tables, rows)

    def _given(
        self, batch: dict[str, np.ndarray], ok: np.ndarray, rows: list[dict[str, Any]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each row's labels as class ids (None where it carries none), and the rows of `ok` still to annotate:
        those whose labels name no class, or that have none where `cam.classes` is `given`, become error rows
        of stage `labels` (decoded for nothing, but the rows of one batch keep one path)."""
        labels = batch.get("labels")
        given = np.empty(len(batch["image_uri"]), dtype=object)
        keep = []
        for i in ok:
            tokens = _tokens(None if labels is None else labels[i])
            try:
                ids = None if tokens is None else self.labels.class_ids(tokens)
            except UnknownLabel as exc:
                rows.append(self._error_row(batch, i, "labels", type(exc).__name__, str(exc)))
                continue
            if self.classes == "given" and not ids:
                why = "no labels given" if ids is None else "an empty list of labels"
                message = f"`cam.classes` is `given` and the image has {why}: nothing to map"
                rows.append(self._error_row(batch, i, "labels", "MissingLabels", message))
                continue
            given[i] = ids
            keep.append(i)
        return given, np.array(keep, dtype=ok.dtype)

    def _given_tensor(self, given: np.ndarray) -> Tensor | None:
        """The rows' given class ids as (B, G), padded with -1; None where no row has any or none are mapped."""
        if self.classes == "predicted" or all(not ids for ids in given):
            return None
        width = max(len(ids) for ids in given if ids)
        out = torch.full((len(given), width), -1, dtype=torch.long)
        for row, ids in enumerate(given):
            if ids:
                out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def _decode_here(
        self, batch: dict[str, np.ndarray], ok: np.ndarray, rows: list[dict[str, Any]]
    ) -> tuple[np.ndarray, Tensor, Tensor]:
        """`runtime.decode: device`: decodes the batch's bytes on the model's device; failures become rows."""
        try:
            canvases = self.loader.decode(
                [batch["encoded"][i] for i in ok],
                [int(batch["orientation"][i]) for i in ok],
                [bool(batch["device_jpeg"][i]) for i in ok],
                self.annotator.canvas_size,
                self.resize,
                interpolation=self.annotator.spec.interpolation,
            )
        except Exception as exc:  # a device fault: every image of the batch is reported, none is lost
            logger.warning("decoding a batch of %d on %s failed", ok.size, self.annotator.device, exc_info=True)
            rows += [self._error_row(batch, i, "decode", *_describe(exc)) for i in ok]
            return ok[:0], torch.empty(0), torch.empty(0)
        for position, error in canvases.failed.items():
            rows.append(self._error_row(batch, ok[position], "decode", error.error_type, error.message))
        return ok[canvases.decoded], self.loader.hand_over(canvases.pixels), canvases.valid_wh

    def _annotate_table(
        self, batch: dict[str, np.ndarray], index: np.ndarray, pixels: Tensor, valid: Tensor
    ) -> pa.Table:
        given = batch["given"][index]
        out = self.annotator.annotate(pixels, valid, self._given_tensor(given))
        images = {
            name: batch[name][index]
            for name in (
                "image_uri",
                "source_version",
                "container_uri",
                "content_sha256",
                "width",
                "height",
                "io_retries",
            )
            if name in batch
        }
        return result_table(out, images, self.row_context, list(given))

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
            "container_uri": batch["container_uri"][index] if "container_uri" in batch else None,
            "stage": stage or str(batch["error_stage"][index]),
            "error_type": error_type or str(batch["error_type"][index]),
            "message": message if message is not None else str(batch["error_message"][index]),
            "run_id": self.run_id,
            "model": self.model_name,
            "config_fingerprint": self.fingerprint,
            "io_retries": int(batch["io_retries"][index]),
        }


# The frames of a call of a torch module: the model's forward, with the hooks it runs and Score-CAM's masked passes.
_MODULE_CALL_CODE = {torch.nn.Module._call_impl.__code__, torch.nn.Module._wrapped_call_impl.__code__}


def _raised_in_a_module(exc: BaseException) -> bool:
    """Whether `exc` came out of a torch module's call (the model's forward on the batch), where one image's
    content can break it; not whether camray's own code around the model (maps, boxes, rows) raised it."""
    frame = exc.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code in _MODULE_CALL_CODE:
            return True
        frame = frame.tb_next
    return False


def _tokens(value: object) -> list[str] | None:
    """A row's label tokens, or None where it has none. Ray Data hands a column of lists back as arrays, and a
    column with no labels at all as a null column (NaN floats)."""
    if isinstance(value, list | tuple | np.ndarray):
        return [str(token) for token in value]
    return None


def _describe(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, "".join(traceback.format_exception_only(exc)).strip()
