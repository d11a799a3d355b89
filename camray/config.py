"""The job configuration: one pydantic model, loadable from YAML, unknown keys rejected.

S3 credentials never appear here: they come from the standard AWS chain (environment, profile, instance
role). Only the endpoint of an S3-compatible store is configurable, because MinIO and Ceph need it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from camray.cam.box_source import BoxSource, boxes_from_label_maps
from camray.cam.method_names import CamMethod
from camray.errors import ConfigError
from camray.presets import apply_preset

logger = logging.getLogger(__name__)

# Old spelling -> new, read for one more version with a warning: the S3 settings were `source` fields, but they
# apply to the output too.
DEPRECATED_FIELDS = {
    "source.s3_endpoint_url": "storage.s3_endpoint_url",
    "source.s3_region": "storage.s3_region",
    "source.s3_max_attempts": "storage.s3_max_attempts",
    # The switch of the first kept class's `mask` column moved to the section of the masks.
    "boxes.masks": "masks.top1",
}


class _Section(BaseModel):
    # A rejected value may hold a secret (an endpoint with a password): errors name the field, never echo the value.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)


class SourceConfig(_Section):
    """Where the images come from."""

    uri: str = Field(
        "samples",
        description="A local folder, an `s3://bucket/prefix`, or a manifest file (.txt: one URI per line; "
        ".csv, .parquet or .jsonl: a `uri` column, and optionally `labels`, the image's labels: class names or ids, "
        "`|`-separated in CSV, a list in Parquet and JSON Lines). WebDataset shards: a folder or prefix of `.tar` "
        "files, one `.tar`, a brace pattern (`s3://b/shards/{000000..000999}.tar`) or a manifest of shard URIs; a "
        "Parquet image table (`format: parquet`): a `.parquet` file, or a folder or prefix of them "
        "(docs/datasets.md). `samples` means the bundled demo photos.",
    )
    labels_from: Literal["folder"] | None = Field(
        None,
        description="`folder`: each image's label is the name of its sub-folder under `uri` (torchvision's "
        "`ImageFolder` layout, `uri/CLASS/.../image.jpg`); images directly under `uri` have none. None: the labels "
        "a manifest's `labels` column gives, if any.",
    )
    format: Literal["files", "webdataset", "parquet"] | None = Field(
        None,
        description="What `uri` names: `files` (one image per object), `webdataset` (tar shards whose samples are "
        "the members sharing a key) or `parquet` (tables of images, a row each). Default: `webdataset` where the "
        "URI, a manifest's first entry or a folder's first file ends in `.tar`, else `files`; a Parquet table is "
        "never guessed (a `.parquet` input alone is a manifest of URIs).",
    )
    image_column: str = Field(
        "image",
        min_length=1,
        description="`format: parquet`: the column holding each row's encoded image: binary, or a struct with a "
        "`bytes` field (the Hugging Face `datasets` Image layout).",
    )
    id_column: str | None = Field(
        None,
        min_length=1,
        description="`format: parquet`: the column whose value names a row (`FILE_URI#ID`); unique within a file. "
        "Default: the row's position in its file, from 0.",
    )
    labels_column: str | None = Field(
        None,
        min_length=1,
        description="`format: parquet`: the column of each image's labels: a class name or id, or a list of "
        "them. Default: none.",
    )
    labels_key: str | None = Field(
        None,
        min_length=1,
        description="`format: webdataset`: the key of each sample's `.json` member that holds its labels (a "
        "class name or id, or a list of them). Default: the `.cls` member, one class id per line, where present.",
    )
    extensions: list[str] = Field(
        default=[".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"],
        description="File suffixes (case-insensitive) that count as images when listing a folder or prefix. "
        "Empty means every object.",
    )
    recursive: bool = Field(True, description="List sub-folders / the whole prefix below `uri`.")
    limit: int | None = Field(
        None,
        ge=1,
        description="Process at most this many listed inputs (for trials): images, or shards and table files.",
    )

    @model_validator(mode="after")
    def _labels_from_a_folder(self) -> SourceConfig:
        from camray.io.listing import MANIFEST_SUFFIXES

        if self.labels_from == "folder" and self.uri.lower().endswith(MANIFEST_SUFFIXES):
            raise ValueError("`source.labels_from` `folder` reads labels from sub-folders: `source.uri` is a manifest")
        if self.labels_from == "folder" and self.format in ("webdataset", "parquet"):
            raise ValueError(
                f"`source.labels_from` `folder` labels image files by their sub-folder, not {self.format} samples: "
                "their labels come from `source.labels_key` or `source.labels_column`"
            )
        return self

    @field_validator("extensions")
    @classmethod
    def _lower_dotted(cls, value: list[str]) -> list[str]:
        return [ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in value]

    @model_validator(mode="after")
    def _fields_of_the_format(self) -> SourceConfig:
        table_fields = [name for name in ("id_column", "labels_column") if getattr(self, name) is not None]
        if self.image_column != "image":
            table_fields.insert(0, "image_column")
        if self.format in ("files", "webdataset") and table_fields:
            raise ValueError(f"`source.{table_fields[0]}` applies to `source.format: parquet`, not {self.format}")
        if self.format in ("files", "parquet") and self.labels_key is not None:
            raise ValueError(f"`source.labels_key` applies to `source.format: webdataset`, not {self.format}")
        return self


class StorageConfig(_Section):
    """How S3 is reached, for the inputs, the weights and the output alike."""

    s3_endpoint_url: str | None = Field(
        None,
        description="Endpoint of an S3-compatible store (MinIO, Ceph). Defaults to the AWS_ENDPOINT_URL "
        "environment variable, then to AWS.",
    )
    s3_region: str | None = Field(None, description="S3 region; defaults to the AWS chain's.")
    s3_max_attempts: int = Field(
        6,
        ge=1,
        le=20,
        description="Attempts in all (retries + 1) for each S3 request of the run, inputs and output alike: "
        "images and staged files through boto3 with AWS's standard backoff (from 1 s for throttling), the listing, "
        "commit and tables through pyarrow with the SDK's legacy one (25 ms, doubling); the job's retries are "
        "counted in the run's log and `runs.io_retries`.",
    )

    @field_validator("s3_endpoint_url")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        from camray.io.s3 import refuse_credentials_in_endpoint

        return value if value is None else refuse_credentials_in_endpoint(value, "the endpoint")


class ModelConfig(_Section):
    """Which classifier, with which weights."""

    name: str = Field(
        "efficientnet_lite0",
        description="Registry name: `efficientnet_lite0/1/2` (bundled weights), a torchvision builder "
        "name (`resnet50`, `vit_b_16`, `swin_t`, ...), `timm:NAME` for any timm classifier "
        "(`timm:convnext_tiny.in12k_ft_in1k`), or `module:factory` (docs/models.md).",
    )
    weights: str | None = Field(
        None,
        description="Weights: a local path, `file://` or `s3://` URI of a state dict (`.pth`, `.bin` or "
        "`.safetensors`), or `torchvision:NAME` (downloads; needs internet). Default: the bundled weights, else "
        "torchvision's DEFAULT, or timm's published weights for `timm:` names (downloads; needs internet).",
    )
    weights_sha256: str | None = Field(None, description="Expected sha256 of the weights file, checked on load.")
    labels: str | None = Field(
        None,
        description="The head's class names: a text file of one name a line, or a JSON list (`.json`); a local "
        "path or an `s3://` URI. Its length must be the head's number of outputs, which comes from the weights. "
        "Default: ImageNet's names for a 1,000-class head, else `class_0`, `class_1`, ... (docs/models.md).",
    )
    head: Literal["softmax", "sigmoid"] = Field(
        "softmax",
        description="How the logits become scores: `softmax` for a single-label classifier (scores sum to 1), "
        "`sigmoid` for a multi-label one (each class an independent probability; `cam.min_score` keeps the classes "
        "present).",
    )
    target_layer: str | None = Field(
        None, description="Module path of the feature layer to explain; default from the registry."
    )
    classifier_layer: str | None = Field(
        None, description="Module path of the final linear layer (CAM); default from the registry."
    )
    input_size: int | None = Field(
        None, ge=32, le=2048, description="Side of the square model input; default: the model's native size."
    )
    resize: Literal["squash", "letterbox"] = Field(
        "letterbox",
        description="`letterbox` keeps the aspect ratio and pads; `squash` stretches to a square. Both keep "
        "the whole image in view (no centre crop).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the model runs.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Autocast dtype on GPU; `auto` is bf16 where the GPU runs it natively (Ampere and later), "
        "else fp16. CPU always runs fp32.",
    )
    channels_last: bool = Field(True, description="Channels-last memory format (faster convolutions on GPU and CPU).")
    compile: bool = Field(False, description="torch.compile the model on GPU (slow start, faster steady state).")


class CamConfig(_Section):
    """How maps are computed and stored."""

    method: CamMethod | None = Field(
        None, description="CAM method; default `cam` for GAP+linear networks, `gradcam` otherwise."
    )
    top_k: int = Field(
        5,
        ge=1,
        le=50,
        description="Predictions for the top-k classes, and with `classes` `predicted`, maps and boxes for them.",
    )
    classes: Literal["predicted", "given", "both"] = Field(
        "predicted",
        description="Which classes of an image get maps, boxes and a mask. `predicted`: the top-k (above "
        "`min_score`). `given`: exactly the image's labels (a manifest's `labels` column, `source.labels_from`), "
        "whatever their rank; an image without labels is an error row. `both`: the union of the two. Predictions "
        "are written in every case.",
    )
    min_score: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Predicted classes scoring below this get no map, box or mask (at most `top_k` are kept; an "
        "image may keep none). With `model.head` `sigmoid` the default is 0.5, the multi-label decision threshold; "
        "with `softmax`, none. Given labels are mapped whatever their score.",
    )
    upsample: int = Field(
        8, ge=1, le=32, description="Maps are upsampled to this multiple of the feature map before boxing."
    )
    refine: bool = Field(
        False,
        description="Multiply each class map by the mean activation of a block at twice its resolution "
        "(`refine_layer`), raised to `refine_power`: tighter boxes on small objects, looser on large ones and on "
        "natural photos (docs/localization.md). Needs a `refine_layer` (the registry names one for "
        "EfficientNet-Lite).",
    )
    refine_layer: str | None = Field(None, description="Module path of the refining block; default from the registry.")
    refine_power: float = Field(
        2.0, ge=0.0, le=8.0, description="Weight of the refining activation against the class map (its exponent)."
    )
    plain_above_score: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Images whose top-1 class scores at least this keep the plain CAM, boxed at "
        "`plain_threshold`: no refinement, no tiles (none go through the model). An object the model is sure of "
        "is one the image frames, and the plain map boxes it whole where refinement and tiles cut it down to its "
        "most active part (docs/localization.md). None: every image alike. A sigmoid head (`model.head`) is never "
        "gated: its independent probabilities score small objects as surely as close-ups (docs/localization-multi.md).",
    )
    plain_threshold: float = Field(
        0.4, gt=0.0, lt=1.0, description="The box threshold of the images that keep the plain CAM."
    )


class BoxConfig(_Section):
    """How maps become boxes and masks."""

    threshold: float = Field(
        0.4,
        gt=0.0,
        lt=1.0,
        description="Foreground where the normalised map >= threshold (a fraction of max); calibrated on the "
        "evaluation set (docs/localization.md).",
    )
    threshold_rule: Literal["max_fraction", "percentile"] = Field(
        "max_fraction",
        description="`max_fraction`: threshold x the map's max. `percentile`: threshold x the map's "
        "`percentile`-th value (Bae et al., ECCV 2020), robust to a single hot spot.",
    )
    percentile: float = Field(90.0, gt=0.0, le=100.0, description="Percentile used by the `percentile` rule.")
    max_boxes_per_class: int = Field(3, ge=1, le=20, description="Keep at most this many components per class.")
    min_area_fraction: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="Components other than the largest must cover this fraction of the image to be kept.",
    )
    source: BoxSource = Field(
        "auto",
        description="What a kept class's boxes are drawn around. `maps`: its map's components above `threshold`. "
        "`label_maps`: its region of the image's label map (`masks`), one box a component, scored by its map's "
        "peak there; edges follow the photo's where the dense CRF decides the label map. `auto`: `label_maps` where "
        "the label maps are written and refined (`masks.refine: crf`) and the kept classes are distinct objects "
        "(`cam.classes: given`, or `model.head: sigmoid`), else `maps`: a softmax head's top-k are rivals for one "
        "object and would split its region (docs/localization-multi.md).",
    )


class MasksConfig(_Section):
    """Label maps for segmentation: each pixel of an image labelled with one of its kept classes, background or
    undecided, written as one COCO RLE per kept class (the `masks` column; docs/localization.md)."""

    label_maps: bool = Field(
        True,
        description="Write each image's label map over its kept classes: the `masks` column, one COCO RLE per kept "
        "class, never overlapping (and `ignore_mask` with `ignore_below`). The maps it is made of: each class's "
        "plain map, or where the preset refines maps, the geometric mean of its plain and refined maps (with the "
        "tiles' where the preset tiles), whatever `cam.plain_above_score` decides for boxes.",
    )
    background: Annotated[float, Field(ge=0.0, le=1.0)] | Literal["auto"] = Field(
        0.8,
        description="A pixel where every kept class's normalised map is below this is background; elsewhere it "
        "takes the class whose map is highest there (the argmax rule of CAM seeds). `auto`: each image's own level, "
        "the mean over the image of its highest map, which the CRF (`refine: crf`) labels best with "
        "(docs/localization.md).",
    )
    refine: Literal["none", "crf"] = Field(
        "none",
        description="`crf`: the label map decided by a fully connected CRF over the label rule's scores and the "
        "image's colours (Kraehenbuehl and Koltun, NeurIPS 2011), so that it follows the photo's edges; computed on "
        "the maps' 56 x 56 grid, on the model's device. `none`: the rule alone.",
    )
    ignore_below: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Above `background`: a pixel whose highest map is below this is left undecided (255 in the "
        "PNG export, `ignore_mask` in the results), as pseudo-label sets leave pixels a segmenter's loss skips. "
        "None: every pixel is decided.",
    )
    top1: bool = Field(
        True,
        description="Also write the `mask` column: the first kept class's map thresholded at its box threshold, "
        "as one COCO RLE (the pseudo-mask of outputs before label maps; kept for one more schema version, then "
        "removed: read `masks`).",
    )

    @model_validator(mode="after")
    def _band_above_background(self) -> MasksConfig:
        if self.ignore_below is not None and self.background != "auto" and self.ignore_below <= self.background:
            raise ValueError(
                f"`masks.ignore_below` ({self.ignore_below}) must be above `masks.background` ({self.background})"
            )
        return self


class TilingConfig(_Section):
    """The tiled, multi-scale localization mode (SAHI-style slicing applied to class maps; docs/localization.md).

    The image is letterboxed into a canvas of `grid` overlapping tiles of the model's input size. The canvas,
    downscaled to the input size, gives the top-k classes and the coarse maps; the tiles, all in one forward
    pass, give each top-k class's map at the finer scale, stitched over the image and fused with the coarse map.
    """

    enabled: bool = Field(False, description="Tile the image for finer maps (costs about `grid`^2 + 1 forwards).")
    grid: int = Field(
        3,
        ge=2,
        le=8,
        description="Tiles along the image's longer side; along the shorter side as many as its extent needs.",
    )
    overlap: float = Field(0.25, ge=0.0, le=0.75, description="Fraction of a tile's side shared with its neighbour.")
    fusion: Literal["max", "product", "layer"] = Field(
        "product",
        description="How the stitched tile map meets the coarse map: `max` of the two, `product` (the coarse map "
        "says which object, the tiles where), or `layer`: the product further weighted by the stitched mean "
        "activation of the earlier block `cam.refine_layer` (LayerCAM-style fusion of a finer layer).",
    )
    whole_image_above_area: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Tiled images whose top-1 box covers at least this fraction of the image take their maps "
        "from the whole image instead, refined by the `cam.refine_layer` activation and boxed at "
        "`whole_image_threshold`: tiles are for small objects, and on a larger one they cut the box down to its "
        "most active part (docs/localization.md). None: the tiled boxes stand.",
    )
    whole_image_threshold: float = Field(
        0.25,
        gt=0.0,
        lt=1.0,
        description="Box threshold (a fraction of the map's max) of the images `whole_image_above_area` sends "
        "back to the whole image's map.",
    )
    mode: Literal["stitch", "windows"] = Field(
        "stitch",
        description="`stitch`: the tiles sharpen the maps of the whole image's top-k classes (above). `windows`, "
        "for several objects an image: the whole image and each tile propose their own confident classes and box "
        "them in their own maps, and the boxes are merged across windows (docs, Localization); `fusion` and "
        "`whole_image_*` apply to `stitch` alone.",
    )
    propose_score: float = Field(
        0.3,
        gt=0.0,
        le=1.0,
        description="`windows`: a tile whose top-1 class reaches this probability proposes and boxes it; the whole "
        "image boxes its best class and each other class it scores this high.",
    )
    merge_iou: float = Field(0.5, gt=0.0, le=1.0, description="`windows`: NMS overlap between boxes of one class.")
    cross_class_iou: float | None = Field(
        0.7,
        gt=0.0,
        le=1.0,
        description="`windows`: NMS overlap between boxes of different classes (one object boxed as tabby and as "
        "tiger cat keeps its better box). None: classes never suppress each other.",
    )
    min_box_score: float = Field(
        0.0, ge=0.0, le=1.0, description="`windows`: boxes scoring below this are not written."
    )
    part_inside: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="`windows`: a tile's box lying this much (a fraction of its area) inside a whole-image box of "
        "its class is a part of that object, cut by the tile, and is dropped. None: kept.",
    )


# The fields the `windows` mode added: stitched runs leave them out of their fingerprint.
WINDOWS = {"mode", "propose_score", "merge_iou", "cross_class_iou", "min_box_score", "part_inside"}
# Fields added later, at the values that change nothing: left out of the fingerprint there, so that outputs made
# before they existed keep theirs (and their done work).
UNSET_BEFORE = {
    "model": {"labels": None, "head": "softmax"},
    "cam": {"classes": "predicted", "min_score": None},
}


class SinkConfig(_Section):
    """Where the tables go, and in what format."""

    uri: str = Field("output", description="A local folder or an `s3://bucket/prefix`.")
    format: Literal["delta", "parquet"] = Field(
        "delta",
        description="The format of a new output's tables: `delta`, Delta Lake tables whose current version every "
        "engine reads as one row per image with no join (docs/output.md), or `parquet`, plain Parquet files read "
        "by joining on the succeeded runs. An existing output keeps its own format; `camray migrate` converts a "
        "Parquet one.",
    )
    incremental: bool = Field(
        True,
        description="Skip images a previous completed run already annotated with the same model and settings "
        "(same URI and same version when listed: `<size>-<last_modified_ns>`, from a folder, an S3 LIST or an S3 "
        "Inventory report, whose ETag serves where it has no size or date; a manifest's entries have none and are "
        "always processed).",
    )
    resume: bool = Field(
        True,
        description="Continue a run on this output that did not finish (crashed, killed, interrupted, incomplete) "
        "with the same model, settings and input: its staged files are kept and only the rest is processed.",
    )
    lease_seconds: float = Field(
        300.0,
        ge=3.0,
        le=86400.0,
        description="Lifetime of the output's lease (one run at a time), renewed every third of it while the run "
        "lasts; a crashed run's lease is taken over once it expires (at once if its process on this host is gone).",
    )
    wait_for_lease: float = Field(
        0.0,
        ge=0.0,
        description="Seconds to wait for another run's lease on the output; 0 refuses at once (exit status 3).",
    )
    rows_per_file: int = Field(
        4096,
        ge=1,
        description="Rows gathered before a Parquet file is written (about 20 KB per result row): query engines "
        "read a few large files far faster than many small ones. The last file of a run holds the remainder.",
    )


class RuntimeConfig(_Section):
    """How the work is spread over the cluster.

    On GPU nodes, the fields left at their defaults (and `model.precision`, `model.channels_last`) give what the
    device benchmark measured fastest (docs/device-benchmark.md): one actor per GPU, batches of 256, bf16,
    channels-last, JPEGs decoded on the GPU, two batches in hand per actor (one decoded while the other is
    computed) and the box stage captured as one CUDA graph. A value set in the config wins over each of them.
    """

    batch_size: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Images per predictor batch; default 256 on GPU (the device benchmark's best), 16 on CPU.",
    )
    num_actors: int | None = Field(
        None, ge=1, description="Predictor actors; default one per GPU, else one per `cpu_threads` CPUs."
    )
    gpus_per_actor: float | None = Field(
        None,
        ge=0,
        le=8,
        description="GPUs per predictor actor; default 1 where the cluster has GPUs, else 0.",
    )
    cpus_per_actor: float | None = Field(
        None,
        gt=0,
        description="CPUs reserved per predictor actor; default 1 on GPU, else `cpu_threads` capped so that the "
        "actors together reserve at most 3/4 of the cluster's CPUs (the rest runs read+decode tasks).",
    )
    decode_batch_size: int = Field(32, ge=1, le=4096, description="Images per read+decode task batch.")
    decode: Literal["auto", "cpu", "device"] = Field(
        "auto",
        description="Where images are decoded: `cpu` in the read tasks; `device` in the predictor, JPEGs batched "
        "on its device (nvJPEG on GPU, for GPU nodes whose CPUs cannot decode as fast as the GPU classifies), "
        "other formats on its CPU. Read tasks check every header either way. `auto`: `device` where the "
        "predictor actors have GPUs, else `cpu`.",
    )
    decode_cpus: float = Field(
        0.5,
        gt=0,
        le=16,
        description="CPUs reserved per read+decode task. Differing from `cpus_per_actor` keeps Ray Data from "
        "fusing decoding into the predictor actors, so the two overlap.",
    )
    capture_boxes: bool | None = Field(
        None,
        description="Run the box stage (maps resampled onto the image, refined, thresholded, labelled into "
        "components, measured) as one CUDA graph a batch, compiled with the model when `model.compile`: a batch "
        "then costs a few launches instead of hundreds, and the boxes are the uncaptured stage's "
        "(docs/device-benchmark.md). Default: on a GPU, without tiling (the tiled modes stay uncaptured). `true` on "
        "a CPU runs the same fixed-shape steps without a graph, slower than OpenCV's labelling.",
    )
    cpu_threads: int | None = Field(
        None,
        ge=1,
        le=512,
        description="Intra-op threads of a predictor running on CPU; default 1 (many single-threaded actors "
        "keep a shared node busier than one multi-threaded actor).",
    )
    object_store_mib: int | None = Field(
        None,
        ge=64,
        description="Object-store memory Ray Data may fill with the run's blocks (read-ahead, results waiting for "
        "their write). Default: eight predictor batches of canvases per actor (at least 256 MiB) plus one "
        "Parquet file's rows: enough to keep every actor fed, and the same at 5,000 images as at 5 million.",
    )
    max_errored_blocks: int = Field(
        0, ge=-1, description="Ray Data blocks allowed to fail outright before the job fails (-1: any)."
    )
    ray_address: str | None = Field(None, description="Ray cluster address; default RAY_ADDRESS, else local.")


class MetricsConfig(_Section):
    """Where the run's outcome goes for monitoring (docs/monitoring.md)."""

    pushgateway_url: str | None = Field(
        None,
        description="Prometheus Pushgateway (`http://host:9091`) that receives the run's outcome when it ends: "
        "status, duration, images by outcome, errors by stage, S3 retries, and the time of the last success. "
        "Default: the CAMRAY_PUSHGATEWAY_URL environment variable, else nothing is pushed. A Pushgateway that "
        "cannot be reached costs a warning, never the run.",
    )
    job_name: str = Field(
        "camray",
        min_length=1,
        description="The `job` label of the pushed metrics; with the output URI (`output` label) it names the "
        "Pushgateway group each run replaces. Alerts and the dashboard select on it.",
    )
    push_timeout_seconds: float = Field(
        10.0, gt=0.0, le=300.0, description="Seconds the push may take before it is given up (with a warning)."
    )

    @field_validator("pushgateway_url")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value is not None and "@" in value.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError("must not hold credentials (`user:password@`): it is stored with each run's config")
        return value


class JobConfig(_Section):
    """One batch-CAM job."""

    source: SourceConfig = Field(default_factory=SourceConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    cam: CamConfig = Field(default_factory=CamConfig)
    boxes: BoxConfig = Field(default_factory=BoxConfig)
    masks: MasksConfig = Field(default_factory=MasksConfig)
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    sink: SinkConfig = Field(default_factory=SinkConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @model_validator(mode="before")
    @classmethod
    def _read_deprecated_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)  # the caller's mapping stays as it was given
        for old, new in DEPRECATED_FIELDS.items():
            old_section, old_field = old.split(".")
            new_section, new_field = new.split(".")
            section = data.get(old_section)
            if not isinstance(section, dict) or old_field not in section:
                continue
            section = dict(section)
            value = section.pop(old_field)
            data[old_section] = section
            target = data.get(new_section, {})
            if not isinstance(target, dict):
                continue  # the section's own validation names it
            if new_field in target and target[new_field] != value:
                raise ValueError(f"`{old}` is the old name of `{new}`, and the two differ: set only `{new}`")
            data[new_section] = {**target, new_field: value}
            message = f"`{old}` is deprecated and will be removed in the next version: set `{new}` instead"
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            logger.warning(message)
        return data

    @model_validator(mode="after")
    def _source_is_not_sink(self) -> JobConfig:
        if self.source.uri.rstrip("/") == self.sink.uri.rstrip("/"):
            raise ValueError("`source.uri` and `sink.uri` must differ: results would be read back as inputs")
        return self

    @model_validator(mode="after")
    def _label_map_boxes_need_label_maps(self) -> JobConfig:
        if self.boxes.source == "label_maps" and not self.masks.label_maps:
            raise ValueError("`boxes.source` is `label_maps`, but `masks.label_maps` is false: no label map to box")
        return self

    def boxes_from_label_maps(self) -> bool:
        """Whether boxes are the label maps' regions (`boxes.source`, resolved as the annotator resolves it)."""
        return boxes_from_label_maps(
            self.boxes.source, self.masks.label_maps, self.masks.refine, self.cam.classes, self.model.head
        )

    def fingerprint(self) -> str:
        """Hash of the settings that change results; runtime, paths and `limit` don't."""
        relevant = self.model_dump(
            include={"model": True, "cam": True, "boxes": True},
            exclude={"model": {"device", "precision", "channels_last", "compile"}, "boxes": {"source"}},
        )
        # The boxes' source enters as resolved, and only where it is not the maps that every output before the
        # field was boxed from: `auto` changes the fingerprint of exactly the runs whose boxes it changes.
        if self.boxes_from_label_maps():
            relevant["boxes"]["source"] = "label_maps"
        # The `mask` switch keeps its old place in the hash; label maps enter it when written, so that outputs
        # made before them keep their fingerprints (and done work) only where a run writes none.
        relevant["boxes"]["masks"] = self.masks.top1
        if self.masks.label_maps:
            relevant["masks"] = self.masks.model_dump(exclude={"top1"})
        for section, defaults in UNSET_BEFORE.items():
            for name, default in defaults.items():
                if relevant[section][name] == default:
                    del relevant[section][name]
        if self.tiling.enabled:  # untiled runs keep the fingerprints they had before tiling existed
            relevant["tiling"] = self.tiling.model_dump(exclude=None if self.tiling.mode == "windows" else WINDOWS)
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _format(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(config)"
        lines.append(f"  {field}: {item['msg']}")
    return "invalid job config:\n" + "\n".join(lines)


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, preset: str | None = None
) -> JobConfig:
    """Reads YAML (if given), applies dotted overrides (`{"model.name": "resnet50"}`), validates.

    A preset (`camray.presets`), named by `preset` or else by the file's top-level `preset:` key, supplies
    values under both: the file's fields and the overrides win over it.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(loaded).__name__}")
        data = loaded or {}
    file_preset = data.pop("preset", None)
    for dotted, value in (overrides or {}).items():
        section, _, field = dotted.partition(".")
        if not field:
            raise ConfigError(f"override `{dotted}` must be `section.field`")
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"`{section}` must be a mapping")
        target[field] = value
    try:
        data = apply_preset(preset or file_preset, data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid job config:\n  preset: {exc}") from exc
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc)) from exc
