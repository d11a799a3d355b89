"""`choose_classes` against an obvious per-image loop: predictions, kept classes, padding, given labels."""

from __future__ import annotations

import pytest
import torch

from camray.cam.classes import choose_classes


def _reference(scores, top_k, mode, min_score, given):
    """Per image, in plain Python: the kept classes best first, and which of them are given."""
    out = []
    for row, labels in zip(scores.tolist(), given.tolist(), strict=True):
        ranked = sorted(range(len(row)), key=lambda c: -row[c])[:top_k]
        predicted = [c for c in ranked if min_score is None or row[c] >= min_score]
        labelled = {c for c in labels if c >= 0} if mode != "predicted" else set()
        chosen = set(predicted if mode != "given" else []) | labelled
        kept = sorted(chosen, key=lambda c: -row[c])
        out.append((kept, [c in labelled for c in kept]))
    return out


@pytest.mark.parametrize("mode", ["predicted", "given", "both"])
@pytest.mark.parametrize("min_score", [None, 0.1])
@pytest.mark.parametrize("seed", range(3))
def test_kept_classes_equal_a_per_image_loop(mode, min_score, seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.softmax(torch.randn(6, 30, generator=generator) * 2, dim=1)
    given = torch.randint(0, 30, (6, 3), generator=generator)
    given[0] = -1  # no labels
    given[1, 2] = -1  # two labels
    given[2, 1] = given[2, 0]  # one label twice
    choice = choose_classes(scores, 4, mode, min_score, given)
    assert torch.equal(choice.predicted_ids, scores.topk(4, dim=1).indices)
    assert torch.equal(choice.predicted_scores, scores.topk(4, dim=1).values)
    for image, (kept, is_given) in enumerate(_reference(scores, 4, mode, min_score, given)):
        slots = choice.kept[image]
        assert choice.class_ids[image][slots].tolist() == kept
        assert choice.given[image][slots].tolist() == is_given and not choice.given[image][~slots].any()
        assert torch.equal(choice.scores[image], scores[image, choice.class_ids[image]])
        assert slots.tolist() == sorted(slots.tolist(), reverse=True)  # an image's own slots come first
    assert choice.class_ids.shape[1] == max(1, max(len(k) for k, _ in _reference(scores, 4, mode, min_score, given)))
    assert choice.every_slot_kept == (mode == "predicted" and min_score is None)


def test_a_ranking_other_than_the_scores_orders_the_classes():
    scores = torch.tensor([[0.1, 0.5, 0.4]])
    ranking = scores.scatter(1, torch.tensor([[0]]), torch.inf)
    choice = choose_classes(scores, 2, "predicted", None, None, ranking)
    assert choice.predicted_ids.tolist() == [[0, 1]] and choice.predicted_scores.tolist() == [pytest.approx([0.1, 0.5])]


def test_nothing_above_the_bound_keeps_one_padding_slot():
    choice = choose_classes(torch.tensor([[0.2, 0.3], [0.9, 0.05]]), 2, "predicted", 0.5)
    assert choice.kept.tolist() == [[False], [True]] and choice.class_ids[1].tolist() == [0]
    assert 0 <= int(choice.class_ids[0, 0]) < 2  # padding holds a class the model has, never written
