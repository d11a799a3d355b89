"""`camray report`: a static, self-contained HTML report of one run, opened from disk with no server or network.

`DIR/index.html` holds the run summary, histograms (inline SVG), a gallery and the error list; the gallery's
pictures are JPEG files in `DIR/images/`. Each gallery entry is the photo in grayscale with its top-1 class
activation map over it (`overlay`'s ramp at 50% opacity) and its boxes with a legend; its label map over the
photo, each class in VOC's palette colour, with a legend of the classes' colours; and the other top-k classes with
their scores and maps. Photos are read back from the input URIs the results recorded (a
sample of a shard or table from its container, read once for the samples of it shown); an input that has
vanished (or changed) since the run is shown as such.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
from PIL import Image, ImageOps, UnidentifiedImageError

from camray.errors import UsageError
from camray.io.container_samples import sample_key, sample_uri
from camray.io.containers import PARQUET, WEBDATASET, ContainerFormat, read_images
from camray.io.output import Output
from camray.io.schema import decode_heatmap, label_map
from camray.io.sources import ByteReader
from camray.outputs.label_png import voc_palette
from camray.outputs.overlay import LabelledBox, draw_boxes, label_overlay, overlay, ramp, resize_map

logger = logging.getLogger(__name__)

GALLERY_SIDE = 480  # long side of a gallery overlay, pixels
THUMB_SIDE = 128  # long side of a top-k class's small map
MAX_ERRORS_LISTED = 1000
TOP_CLASSES = 15
SUMMARY_COLUMNS = (
    "run_id",
    "status",
    "message",
    "started_at",
    "finished_at",
    "seconds",
    "listed",
    "skipped",
    "results",
    "errors",
    "model",
    "weights_source",
    "weights_sha256",
    "input_uri",
    "config_fingerprint",
)


@dataclass(frozen=True)
class Photo:
    """The input read back: a grayscale array at display size, or why there is none."""

    gray: np.ndarray | None
    problem: str | None = None


def _display_size(width: int, height: int, side: int) -> tuple[int, int]:
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def read_photo(reader: ByteReader | InputBytes, row: dict[str, Any], side: int) -> Photo:
    """The row's input in grayscale at display size; a missing, unreadable or changed input is named."""
    try:
        data = reader.read(row["image_uri"])
    except FileNotFoundError:
        return Photo(None, "input missing")
    except OSError as exc:
        if "does not exist" in str(exc) or "NoSuchKey" in str(exc) or "NOT_FOUND" in str(exc).upper():
            return Photo(None, "input missing")
        return Photo(None, f"input unreadable: {type(exc).__name__}: {exc}")
    if row.get("content_sha256") and hashlib.sha256(data).hexdigest() != row["content_sha256"]:
        return Photo(None, "input changed since the run")
    size = _display_size(row["width"], row["height"], side)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("L", (side, side))  # JPEG: decode at a reduced scale, never below what is shown
            gray = ImageOps.exif_transpose(image).convert("L").resize(size, Image.Resampling.LANCZOS)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        return Photo(None, f"input unreadable: {type(exc).__name__}: {exc}")
    return Photo(np.asarray(gray))


def _save_jpeg(array_or_image: np.ndarray | Image.Image, path: Path) -> None:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    image.convert("RGB").save(path, "JPEG", quality=88)


def _map_picture(photo: Photo, cam: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
    heat = decode_heatmap(cam)
    if photo.gray is None:
        return ramp(resize_map(heat, size))  # the map alone: still worth seeing when the photo is gone
    gray = photo.gray
    if gray.shape[::-1] != size:
        gray = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR))
    return overlay(gray, heat)


def _bars(title: str, rows: list[tuple[str, int]], width: int = 420) -> str:
    """A horizontal bar chart as inline SVG: one row per (label, count)."""
    if not rows:
        return f'<figure class="chart"><figcaption>{html.escape(title)}</figcaption><p>no data</p></figure>'
    row_height, label_width, right = 18, 150, 44
    top = max(count for _, count in rows) or 1
    bar_space = width - label_width - right
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row_height * len(rows) + 4}" '
        f'role="img" aria-label="{html.escape(title)}">'
    ]
    for index, (label, count) in enumerate(rows):
        y = index * row_height + 2
        length = bar_space * count / top
        shown = label if len(label) <= 24 else label[:23] + "…"
        parts.append(
            f'<text x="{label_width - 6}" y="{y + 13}" text-anchor="end">{html.escape(shown)}</text>'
            f'<rect x="{label_width}" y="{y + 2}" width="{length:.1f}" height="{row_height - 5}" fill="#3b6ea8">'
            f"<title>{html.escape(label)}: {count}</title></rect>"
            f'<text x="{label_width + length + 4:.1f}" y="{y + 13}">{count}</text>'
        )
    parts.append("</svg>")
    return f'<figure class="chart"><figcaption>{html.escape(title)}</figcaption>{"".join(parts)}</figure>'


def _binned(values: list[float], bins: int = 10) -> list[tuple[str, int]]:
    counts = np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))[0] if values else []
    return [(f"{i / bins:.1f}–{(i + 1) / bins:.1f}", int(count)) for i, count in enumerate(counts)]


def histograms(results: pa.Table) -> str:
    """The run's distributions: top-1 classes, top-1 scores, box sizes relative to the image, boxes per image."""
    rows = results.select(["width", "height", "predictions", "boxes"]).to_pylist()
    top1 = [row["predictions"][0] for row in rows if row["predictions"]]
    classes = Counter(prediction["label"] for prediction in top1).most_common()
    class_rows = classes[:TOP_CLASSES]
    if len(classes) > TOP_CLASSES:
        class_rows.append((f"{len(classes) - TOP_CLASSES} other classes", sum(c for _, c in classes[TOP_CLASSES:])))
    fractions = [
        (box["x1"] - box["x0"]) * (box["y1"] - box["y0"]) / (row["width"] * row["height"])
        for row in rows
        for box in row["boxes"] or []
    ]
    per_image = Counter(len(row["boxes"] or []) for row in rows)
    most = max(per_image, default=0)
    return "".join(
        [
            _bars("Top-1 classes (images)", class_rows),
            _bars("Top-1 scores (images)", _binned([p["score"] for p in top1])),
            _bars("Box area / image area (boxes)", _binned(fractions)),
            _bars("Boxes per image (images)", [(str(n), per_image.get(n, 0)) for n in range(most + 1)]),
        ]
    )


def _cell(name: str, value: Any) -> str:
    if value is None:
        return '<span class="null">–</span>'
    if name == "stats_uri":
        return f'<a href="{html.escape(str(value))}">{html.escape(str(value))}</a>'
    if isinstance(value, float):
        return f"{value:,.3f}"
    return html.escape(str(value))


def summary(run: dict[str, Any], results: pa.Table, errors: pa.Table) -> str:
    """The run's row (every column present, whatever the schema version), throughput, method and config."""
    images_per_second = run.get("images_per_second")
    if images_per_second is None and run.get("seconds"):
        images_per_second = ((run.get("results") or 0) + (run.get("errors") or 0)) / run["seconds"]
    config = json.loads(run["config_json"]) if run.get("config_json") else {}
    methods = sorted(set(results.column("method").to_pylist())) if results.num_rows else []
    method = ", ".join(methods) or str(config.get("cam", {}).get("method") or "model default")
    shown = [c for c in SUMMARY_COLUMNS if c in run] + [
        c for c in run if c not in SUMMARY_COLUMNS and c not in ("config_json", "images_per_second")
    ]
    rows = [("images per second", _cell("", images_per_second)), ("method", html.escape(method))]
    rows += [(name, _cell(name, run[name])) for name in shown]
    table = "".join(f"<tr><th>{html.escape(name)}</th><td>{value}</td></tr>" for name, value in rows)
    by_type = Counter(zip(errors.column("stage").to_pylist(), errors.column("error_type").to_pylist(), strict=True))
    error_rows = "".join(
        f"<tr><td>{html.escape(str(stage))}</td><td>{html.escape(str(kind))}</td><td>{count}</td></tr>"
        for (stage, kind), count in sorted(by_type.items(), key=lambda item: (-item[1], str(item[0])))
    )
    errors_html = (
        f'<table class="grid"><tr><th>stage</th><th>type</th><th>images</th></tr>{error_rows}</table>'
        if error_rows
        else "<p>No errors.</p>"
    )
    config_html = html.escape(json.dumps(config, indent=2, sort_keys=True))
    return (
        f'<table class="summary">{table}</table>'
        f"<h3>Errors by stage and type</h3>{errors_html}"
        f"<details><summary>Config</summary><pre>{config_html}</pre></details>"
    )


def _gallery_entry(index: int, row: dict[str, Any], reader: ByteReader | InputBytes, images_dir: Path) -> str:
    """One image: the map of its first kept class (the mask's) with its boxes; beside it the other kept classes'
    maps, then the predictions that have none. Kept classes are the top-k predictions unless the run mapped given
    labels (`cam.classes`): those are marked `given`, and the probability shown is the prediction's where the class
    is one (a given label outside the top-k has none stored: its box's own score stands in)."""
    photo = read_photo(reader, row, GALLERY_SIDE)
    predictions = row["predictions"] or []
    probs = {p["class_id"]: p["score"] for p in predictions}
    ranks = {p["class_id"]: rank for rank, p in enumerate(predictions, start=1)}
    given = {label["class_id"] for label in row.get("labels") or []}
    names = {
        entry["class_id"]: entry["label"] for entry in [*(row.get("labels") or []), *(row["boxes"] or []), *predictions]
    }
    cams = row["cams"] or []
    top1 = predictions[0] if predictions else None
    size = _display_size(row["width"], row["height"], GALLERY_SIDE)
    name = html.escape(row["image_uri"].rsplit("/", 1)[-1])
    caption = f'<div class="uri">{html.escape(row["image_uri"])} · {row["width"]}×{row["height"]}</div>'

    def title(class_id: int) -> str:
        label = html.escape(names.get(class_id, str(class_id)))
        rank = f"{ranks[class_id]}. " if class_id in ranks else ""
        score = f" <b>{probs[class_id]:.3f}</b>" if class_id in probs else ""
        return f"{rank}{label}{score}{' <i>given</i>' if class_id in given else ''}"

    if cams:
        first = cams[0]["class_id"]
        picture = Image.fromarray(_map_picture(photo, cams[0], size))
        # The legend gives the class's probability; a box's own score also weighs in the map's peak inside it.
        boxes = [
            LabelledBox(b["x0"], b["y0"], b["x1"], b["y1"], b["label"], probs.get(b["class_id"], b["score"]))
            for b in row["boxes"] or []
        ]
        picture = draw_boxes(picture, boxes, (row["width"], row["height"]))
        file = f"{index:04d}.jpg"
        _save_jpeg(picture, images_dir / file)
        alt = f"{name}: map of {names.get(first, first)}"
        main = f'<img src="images/{file}" width="{size[0]}" height="{size[1]}" alt="{html.escape(alt)}">'
        head = title(first)
    else:
        main = '<div class="missing">no map</div>'
        head = title(top1["class_id"]) if top1 else "no prediction"
    if photo.problem:
        main = f'<div class="problem">{html.escape(photo.problem)}; the map is shown alone</div>{main}'
    labelled = _label_map_picture(index, row, photo, size, names, images_dir)
    others = []
    thumb_size = _display_size(row["width"], row["height"], THUMB_SIDE)
    for position, cam in enumerate(cams[1:], start=2):
        label = html.escape(names.get(cam["class_id"], str(cam["class_id"])))
        file = f"{index:04d}-{position}.jpg"
        _save_jpeg(_map_picture(photo, cam, thumb_size), images_dir / file)
        thumb = f'<img src="images/{file}" width="{thumb_size[0]}" height="{thumb_size[1]}" alt="{label}">'
        others.append(f'<div class="other">{thumb}<div>{title(cam["class_id"])}</div></div>')
    mapped = {cam["class_id"] for cam in cams}
    shown_first = cams[0]["class_id"] if cams else (top1["class_id"] if top1 else None)
    for prediction in predictions:
        if prediction["class_id"] not in mapped and prediction["class_id"] != shown_first:
            others.append(f'<div class="other"><div>{title(prediction["class_id"])}</div></div>')
    return (
        f'<section class="entry"><div class="main">{main}{caption}<div class="top1">{head}</div></div>{labelled}'
        f'<div class="others">{"".join(others)}</div></section>'
    )


def _label_map_picture(
    index: int, row: dict[str, Any], photo: Photo, size: tuple[int, int], names: dict[int, str], images_dir: Path
) -> str:
    """The image's label map over the photo (each class in VOC's palette colour of its position among the kept
    classes, as `camray.io.schema.label_map` numbers them) with a legend of the classes' colours; nothing for a
    row without one."""
    labels = label_map(row)
    if labels is None:
        return ""
    palette = voc_palette()
    small = np.asarray(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST))
    gray = photo.gray if photo.gray is not None and photo.gray.shape[::-1] == size else None
    if gray is None:  # no photo: the label map on grey, still worth seeing
        gray = np.full(small.shape, 128, dtype=np.uint8)
    file = f"{index:04d}-labels.jpg"
    _save_jpeg(label_overlay(gray, small, palette), images_dir / file)
    present = set(np.unique(small).tolist())
    legend = []
    for value, entry in enumerate(row["masks"], start=1):
        name = html.escape(entry.get("label") or names.get(entry["class_id"], str(entry["class_id"])))
        colour = "#{:02x}{:02x}{:02x}".format(*palette[3 * value : 3 * value + 3])
        share = "" if value in present else " <i>(no pixel)</i>"
        legend.append(f'<li><span class="swatch" style="background:{colour}"></span>{name}{share}</li>')
    if row.get("ignore_mask") is not None:
        colour = "#{:02x}{:02x}{:02x}".format(*palette[3 * 255 : 3 * 256])
        legend.append(f'<li><span class="swatch" style="background:{colour}"></span>undecided</li>')
    alt = html.escape(f"{row['image_uri'].rsplit('/', 1)[-1]}: label map")
    return (
        f'<div class="labels"><img src="images/{file}" width="{size[0]}" height="{size[1]}" alt="{alt}">'
        f'<ul class="legend">{"".join(legend)}</ul></div>'
    )


class InputBytes:
    """The bytes of the rows' inputs: an image file read whole, a sample of a shard or table from its container,
    each container read once for the samples of it the gallery shows (as far as the last of them)."""

    def __init__(self, output: Output, source: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        self._files = ByteReader(output.s3)
        self._samples: dict[str, bytes] = {}
        self._unreadable: dict[str, str] = {}  # container -> why it could not be read
        wanted: dict[str, set[str]] = {}
        for row in rows:
            if row.get("container_uri"):
                wanted.setdefault(row["container_uri"], set()).add(sample_key(row["container_uri"], row["image_uri"]))
        fmt = _container_format(source)
        for container, keys in wanted.items():
            try:
                found = read_images(container, fmt, keys, output.s3)
            except OSError as exc:  # the store is down: the photos are shown as unreadable, the maps alone
                logger.warning("cannot read %s for the gallery: %s", container, exc)
                self._unreadable[container] = f"{container}: {exc}"
                continue
            self._samples.update({sample_uri(container, key): data for key, data in found.items()})
        self._containers = {row["image_uri"]: row["container_uri"] for row in rows if row.get("container_uri")}

    def read(self, uri: str) -> bytes:
        if uri in self._samples:
            return self._samples[uri]
        if uri in self._containers:
            container = self._containers[uri]
            if container in self._unreadable:
                raise OSError(self._unreadable[container])
            raise FileNotFoundError(f"{uri}: no such sample in its container now")
        return self._files.read(uri)


def _container_format(source: dict[str, Any]) -> ContainerFormat:
    """How the run read its containers, from its config's `source` section (defaults where it is older)."""
    kind = PARQUET if source.get("format") == PARQUET else WEBDATASET
    defaults = ContainerFormat(kind)
    return ContainerFormat(
        kind,
        image_suffixes=tuple(source.get("extensions") or defaults.image_suffixes),
        labels_key=source.get("labels_key"),
        image_column=source.get("image_column") or defaults.image_column,
        id_column=source.get("id_column"),
        labels_column=source.get("labels_column"),
    )


def gallery(output: Output, run_id: str, uris: list[str], dest: Path, source: dict[str, Any] | None = None) -> str:
    """The gallery of `uris` (results of `run_id`); `source` is the run's `source` config section, which says
    how samples of shards and tables are read back."""
    if not uris:
        return "<p>No results in this run.</p>"
    images_dir = dest / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rows = output.table(
        "results",
        [run_id],
        [
            "image_uri",
            "container_uri",
            "content_sha256",
            "width",
            "height",
            "labels",
            "predictions",
            "cams",
            "boxes",
            "masks",
            "ignore_mask",
        ],
        pads.field("image_uri").isin(uris),
    ).to_pylist()
    rows.sort(key=lambda row: row["image_uri"])
    reader = InputBytes(output, source or {}, rows)
    return "".join(_gallery_entry(index, row, reader, images_dir) for index, row in enumerate(rows))


def error_list(errors: pa.Table) -> str:
    if errors.num_rows == 0:
        return "<p>No errors.</p>"
    shown = errors.sort_by("image_uri").slice(0, MAX_ERRORS_LISTED).to_pylist()
    rows = "".join(
        f"<tr><td>{html.escape(e['image_uri'])}</td><td>{html.escape(str(e['stage']))}</td>"
        f"<td>{html.escape(str(e['error_type']))}</td><td>{html.escape(str(e['message']))}</td></tr>"
        for e in shown
    )
    more = errors.num_rows - len(shown)
    note = f"<p>{more} more; list them with <code>camray query</code>.</p>" if more > 0 else ""
    head = "<tr><th>URI</th><th>stage</th><th>type</th><th>message</th></tr>"
    return f'<table class="grid errors">{head}{rows}</table>{note}'


STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; } h2 { font-size: 18px; border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 32px; }
table.summary th { text-align: left; padding-right: 16px; font-weight: 600; vertical-align: top; }
table.summary td, table.summary th { padding: 2px 8px 2px 0; font-size: 13px; }
table.grid { border-collapse: collapse; font-size: 13px; }
table.grid td, table.grid th { border: 1px solid #ccc; padding: 3px 8px; }
table.errors td:first-child { word-break: break-all; }
.null { color: #999; } pre { font-size: 12px; background: #f6f6f6; padding: 8px; }
.charts { display: flex; flex-wrap: wrap; gap: 24px; } .chart figcaption { font-weight: 600; margin-bottom: 4px; }
.chart svg text { font-size: 11px; fill: #222; }
.entry { display: flex; gap: 16px; align-items: flex-start; border-bottom: 1px solid #eee; padding: 12px 0; }
.uri { font-size: 12px; color: #555; word-break: break-all; max-width: 480px; }
.top1 { font-size: 14px; } .others { display: flex; flex-wrap: wrap; gap: 10px; max-width: 600px; }
.other { font-size: 12px; width: 140px; } .problem, .missing { color: #a00; font-weight: 600; padding: 6px 0; }
.legend { list-style: none; padding: 0; margin: 4px 0; font-size: 12px; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px; vertical-align: middle;
  border: 1px solid #555; }
"""


def _source_section(run: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(run.get("config_json") or "{}").get("source", {})
    except ValueError:
        return {}


def write_report(output: Output, dest: str | Path, run_id: str | None = None, limit: int = 24) -> Path:
    """Writes `dest/index.html` (and `dest/images/`) for `run_id`, or the newest succeeded run; returns the
    page's path. `limit` bounds the gallery; histograms and the error list cover the whole run."""
    if limit < 0:
        raise UsageError(f"`limit` must be >= 0, not {limit}")
    run = output.pick_run(run_id)
    dest = Path(dest)
    if (dest / "images").exists():
        shutil.rmtree(dest / "images")  # pictures of an earlier report of another run must not linger
    dest.mkdir(parents=True, exist_ok=True)
    results = output.table(
        "results", [run["run_id"]], ["image_uri", "width", "height", "method", "predictions", "boxes"]
    )
    errors = output.table("errors", [run["run_id"]])
    uris = sorted(results.column("image_uri").to_pylist())[:limit]
    title = f"camray run {run['run_id']}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)} <small>({html.escape(str(run["status"]))})</small></h1>
<p>Output <code>{html.escape(output.uri)}</code>.</p>
<h2>Summary</h2>{summary(run, results, errors)}
<h2>Distributions</h2><div class="charts">{histograms(results)}</div>
<h2>Gallery ({len(uris)} of {results.num_rows} images)</h2>
<p>Each photo in grayscale under its top-1 class activation map (50% opacity), with its boxes; beside it its
label map (each kept class in its colour, background clear) with the legend of the classes, then the other kept
classes, each with its own map.</p>
{gallery(output, run["run_id"], uris, dest, _source_section(run))}
<h2>Errors ({errors.num_rows})</h2>{error_list(errors)}
</body></html>
"""
    index = dest / "index.html"
    index.write_text(page, encoding="utf-8")
    logger.info("report of run %s written to %s", run["run_id"], index)
    return index
