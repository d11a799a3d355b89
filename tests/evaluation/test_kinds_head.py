"""The trained head's parts: its generated training images, its training, and the checkpoint it writes, loaded
back as the annotator's model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from camray.evaluation.kinds_head import (
    MODEL,
    load_head,
    mean_ap,
    pooled_features,
    train_head,
    training_images,
)
from camray.evaluation.segset import CLASSES


def test_training_images_are_seeded_letterboxed_and_labelled() -> None:
    first, again = training_images(6, seed=3, input_size=224), training_images(6, seed=3, input_size=224)
    assert np.array_equal(first.pixels, again.pixels) and np.array_equal(first.targets, again.targets)
    assert first.pixels.shape == (6, 224, 224, 3) and first.targets.shape == (6, len(CLASSES))
    assert set(np.unique(first.targets).tolist()) <= {0.0, 1.0} and first.targets.sum() > 0
    assert (first.targets.sum(axis=1) <= 3).all()
    for pixels, (w, h) in zip(first.pixels, first.valid_wh, strict=True):
        assert max(w, h) == 224 and not pixels[h:].any() and not pixels[:, w:].any()


def test_mean_ap_is_pascal_average_precision() -> None:
    rng = np.random.default_rng(0)
    targets = (rng.random((50, 4)) < 0.3).astype(np.float32)
    scores = targets * 0.5 + rng.random((50, 4))
    expected = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(4)])
    assert mean_ap(scores, targets) == pytest.approx(expected)


def test_the_head_learns_separable_labels() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(200, 16, generator=generator)
    targets = torch.stack([(features[:, 0] > 0), (features[:, 1] + features[:, 2] > 0.5)], dim=1).float()
    head = train_head(features, targets, seed=0, epochs=200)
    with torch.no_grad():
        predicted = torch.sigmoid(head(features)) >= 0.5
    assert (predicted == targets.bool()).float().mean() > 0.95


def test_a_written_checkpoint_loads_as_the_annotators_model(tmp_path, lite0) -> None:
    """A full Lite0 state dict with an N-class head and its labels file: the checkpoint `train` writes."""
    state = {key: value.clone() for key, value in lite0.module.state_dict().items()}
    state["classifier.1.weight"] = torch.randn(len(CLASSES), 1280) * 0.01
    state["classifier.1.bias"] = torch.zeros(len(CLASSES))
    torch.save(state, tmp_path / "head.pth")
    (tmp_path / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    loaded = load_head(tmp_path / "head.pth", tmp_path / "labels.txt")
    assert loaded.spec.name == MODEL and loaded.spec.categories == CLASSES
    data = training_images(2, seed=0, input_size=224)
    features = pooled_features(loaded, data)
    assert torch.allclose(features, pooled_features(lite0, data), atol=1e-5)  # the backbone is Lite0's own
    with torch.no_grad():
        assert loaded.module(torch.zeros(1, 3, 224, 224)).shape == (1, len(CLASSES))
