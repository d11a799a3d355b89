import pytest
import torch

from camray.cam.tokens import to_grid


def test_tokens_become_their_grid_after_the_prefix():
    """Against an obvious loop: patch token i sits at row i // side, column i % side."""
    b, prefix, side, c = 2, 2, 3, 5
    tokens = torch.randn(b, prefix + side * side, c)
    grid = to_grid(tokens, "tokens", prefix)
    assert grid.shape == (b, c, side, side)
    for index in range(side * side):
        torch.testing.assert_close(grid[:, :, index // side, index % side], tokens[:, prefix + index])


def test_leading_dimensions_are_kept_for_batched_gradients():
    grads = torch.randn(4, 2, 1 + 16, 8)  # (K, B, tokens, C)
    assert to_grid(grads, "tokens", 1).shape == (4, 2, 8, 4, 4)
    channels_last = torch.randn(4, 2, 3, 3, 8)
    torch.testing.assert_close(to_grid(channels_last, "nhwc"), channels_last.permute(0, 1, 4, 2, 3))
    feature_map = torch.randn(2, 8, 3, 3)
    assert to_grid(feature_map, "nchw") is feature_map


def test_tokens_that_form_no_square_grid_are_refused():
    with pytest.raises(ValueError, match="10 patch tokens .* do not form a square grid"):
        to_grid(torch.randn(1, 11, 4), "tokens", 1)
    with pytest.raises(ValueError, match="`layout` must be one of"):
        to_grid(torch.randn(1, 4, 2, 2), "nwhc")  # type: ignore[arg-type]
