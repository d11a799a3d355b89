"""The fully connected CRF (Kraehenbuehl and Koltun, NeurIPS 2011) over a label map's grid, batched in torch.

The classic refinement of CAM seeds (SEC, AffinityNet, IRN): each cell's label is pulled towards the labels of
cells of like colour across the image (the appearance kernel) and of its neighbours (the smoothness kernel), so
that a label map follows the photo's edges rather than the blobs of a 7 x 7 map. Its mean-field inference filters
the marginals with Gaussian kernels over every pair of cells; as in the reference implementation (`pydensecrf`),
the filtering is done on a permutohedral lattice (Adams, Baek and Davis, Eurographics 2010): splat each cell onto
the vertices of its simplex, blur along the lattice's axes, slice back, in time linear in the cells. Here the
lattice is built with tensor operations (one sort of packed integer keys, no hash table), on the maps' device,
for a batch at once, with no compiled extension.

Conventions, stated once: `C` labels, background first (`probabilities (B, C, R, R)`), over a grid covering the
whole image, as `camray.cam.label_maps`; colours `(B, 3, R, R)` in RGB levels (0-255), each cell's mean colour;
`aspect (B, 2)` each image's width and height (any unit): distances are measured in cells of the image's longer
side, so that a grid stretched over a wide image is not a stretched kernel.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class CrfSettings:
    """The CRF's kernels (standard deviations: the appearance kernel's in cells of the image's longer side and in
    RGB levels, the smoothness kernel's in cells of the grid; weights) and its mean-field rounds. Defaults
    measured on the segmentation set's `dev` scenes at 56 x 56 cells (docs/localization.md): an appearance kernel
    spanning half the image, a smoothness kernel of a cell."""

    iterations: int = 5
    appearance_sigma: float = 25.0
    colour_sigma: float = 5.0
    appearance_weight: float = 4.0
    smoothness_sigma: float = 1.0
    smoothness_weight: float = 3.0


def _area_weights(extent: Tensor, grid: int, length: int) -> Tensor:
    """(B, grid, length): the share of each of `length` pixels in each of `grid` equal bins spanning `[0, extent)`
    of an axis, divided by the bin's width (so a row of weights averages its bin); `extent (Tensor[B])`."""
    width = (extent.float() / grid).view(-1, 1, 1)
    start = torch.arange(grid, device=extent.device).view(1, -1, 1) * width
    pixel = torch.arange(length, device=extent.device).view(1, 1, -1).float()
    overlap = (torch.minimum(pixel + 1, start + width) - torch.maximum(pixel, start)).clamp_min(0.0)
    return overlap / width


def cell_colours(pixels: Tensor, valid_wh: Tensor, grid: int) -> Tensor:
    """The mean colour of each cell of a `grid` x `grid` grid over each canvas's valid region.

    Args:
        pixels (Tensor[B, S, S, 3]): uint8 canvases, the image in the top-left `valid_wh` (B, 2) pixels.

    Returns:
        Tensor[B, 3, grid, grid]: float32 RGB levels; each cell the area mean of the pixels it covers (two batched
        matrix products, as `camray.cam.maps.resample_regions`), the padding never counted.
    """
    image = pixels.permute(0, 3, 1, 2).float()
    valid_wh = valid_wh.to(image.device)
    rows = _area_weights(valid_wh[:, 1], grid, image.shape[-2])
    cols = _area_weights(valid_wh[:, 0], grid, image.shape[-1])
    return rows.unsqueeze(1) @ image @ cols.unsqueeze(1).transpose(-1, -2)


def _positions(aspect: Tensor, grid: int) -> Tensor:
    """(B, N, 2): each cell's centre (x, y) in cells of the image's longer side."""
    wh = aspect.float()
    scale = wh / wh.amax(dim=1, keepdim=True)  # (B, 2): 1 along the longer side
    centres = torch.arange(grid, device=aspect.device, dtype=torch.float32) + 0.5
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    cells = torch.stack([xs.flatten(), ys.flatten()], dim=-1)  # (N, 2), row-major as the grid's flattening
    return cells.unsqueeze(0) * scale.unsqueeze(1)


def _elevation(d: int, device: torch.device) -> Tensor:
    """(d + 1, d): features -> the lattice's hyperplane (coordinates summing to 0), scaled so that the lattice's
    blur is a Gaussian of unit standard deviation in the features (the reference's `scale_factor`)."""
    scale = torch.tensor([math.sqrt(2.0 / 3.0) * (d + 1) / math.sqrt((i + 1) * (i + 2)) for i in range(d)])
    matrix = torch.zeros(d + 1, d)
    for j in range(d + 1):
        matrix[j, j:] = scale[j:]  # the sum of the scaled features from j on
        if j > 0:
            matrix[j, j - 1] = -j * scale[j - 1]
    return matrix.to(device)


def _csr(rows: Tensor, columns: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A sparse CSR matrix of the lattice's indices, which are valid by construction (no invariant checks); torch
    warns once a process that its CSR support is in beta, which no user of camray can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(rows, columns, values, size=size, check_invariants=False)


class Lattice:
    """The permutohedral lattice of a set of points (features scaled to unit standard deviation), grouped so that
    points of different groups (images) never share a vertex: `filter` applies the Gaussian kernel
    ``exp(-|f_i - f_j|^2 / 2)`` within each group, approximately, as the reference does (each point with itself
    included).

    Splatting the points onto their simplices' vertices and slicing them back are sparse matrices (vertices x
    points, points x vertices), each one product over the values' channels: on a CPU the scatter-add and the
    gather-and-weigh they replace took three times as long (docs/localization.md)."""

    def __init__(self, features: Tensor, group: Tensor) -> None:
        """features (Tensor[P, d]) float32; group (Tensor[P]) long."""
        points, d = features.shape
        device = features.device
        self.d = d
        self.points = points
        elevated = features.float() @ _elevation(d, device).T  # (P, d + 1)
        # The nearest point of the lattice's remainder-0 class, then each coordinate's rank in the differential:
        # its place in the differential sorted down, ties by coordinate (the reference's rule).
        scaled = elevated / (d + 1)
        up, down = scaled.ceil() * (d + 1), scaled.floor() * (d + 1)
        rem0 = torch.where(up - elevated < elevated - down, up, down)
        total = torch.round(rem0.sum(dim=1) / (d + 1)).long()
        order = (elevated - rem0).sort(dim=1, descending=True, stable=True).indices
        places = torch.arange(d + 1, device=device).expand(points, d + 1)
        rank = torch.empty_like(order).scatter_(1, order, places) + total.view(-1, 1)
        low, high = rank < 0, rank > d
        rank = torch.where(low, rank + d + 1, torch.where(high, rank - d - 1, rank))
        rem0 = torch.where(low, rem0 + d + 1, torch.where(high, rem0 - d - 1, rem0))
        # Barycentric weights of the simplex's d + 1 vertices.
        share = (elevated - rem0) / (d + 1)
        barycentric = torch.zeros(points, d + 2, device=device)
        barycentric.scatter_add_(1, d - rank, share)
        barycentric.scatter_add_(1, d - rank + 1, -share)
        barycentric[:, 0] += 1.0 + barycentric[:, d + 1]
        weights = barycentric[:, : d + 1]  # (P, d + 1)
        # Only the first d coordinates name a vertex (the last is minus their sum). A simplex's vertices lie within
        # d of its remainder-0 point in each, and their neighbours d + 1 further either way.
        origin = rem0[:, :d].long()
        offset = origin.amin(dim=0) - 2 * d - 1
        radix = origin.amax(dim=0) + 2 * d + 2 - offset
        if float(radix.double().log2().sum()) + math.log2(int(group.max()) + 2) > 62:
            raise ValueError("features too spread for the lattice's 63-bit keys: scale them down or split the groups")
        # Mixed radix: coordinate a weighs the product of the radices after it; the group weighs all of them.
        place_values = torch.cat([torch.flip(torch.cumprod(torch.flip(radix, [0]), 0), [0])[1:], radix.new_ones(1)])
        # Vertex k of a point's simplex is its remainder-0 point plus the canonical simplex's k-th vertex permuted
        # by the ranks: each coordinate gains k, less d + 1 where its rank exceeds d - k. The packing is linear,
        # so the vertex's key is the remainder-0 point's, plus k times the place values' sum, less d + 1 times
        # the place values of the coordinates ranked above d - k (a suffix sum over the ranks).
        by_rank = torch.zeros(points, d + 2, dtype=torch.long, device=device)
        by_rank.scatter_(1, rank[:, :d], place_values.expand(points, d))
        ranked_from = by_rank.flip(1).cumsum(1).flip(1)  # [p, j]: the place values of the coordinates ranked >= j
        k = torch.arange(d + 1, device=device)
        packed = (
            ((origin - offset) * place_values).sum(dim=1, keepdim=True)
            + group.view(-1, 1) * torch.prod(radix)
            + k * place_values.sum()
            - (d + 1) * ranked_from[:, d + 1 - k]
        )  # (P, d + 1): each point's vertices
        # One sort gives the vertices' keys in order, each point's vertices and the splat's rows (by vertex).
        ordered, by_vertex = packed.flatten().sort()
        self.vertices, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
        count = self.vertices.numel()
        vertex_of = torch.empty_like(inverse)
        vertex_of[by_vertex] = inverse
        flat = weights.flatten()
        self._slice = (torch.arange(0, points * (d + 1) + 1, d + 1, device=device), vertex_of, flat)
        point_of = torch.div(by_vertex, d + 1, rounding_mode="floor")
        self._splat = (torch.cat([counts.new_zeros(1), counts.cumsum(0)]), point_of, flat[by_vertex])
        # The neighbour along axis a: coordinate a less d and every other named coordinate plus 1 (along the last
        # axis, every one plus 1). The radices leave room for a step either way, so a step is a fixed shift of
        # the packed key: no vertex is unpacked, and one search over every axis finds them.
        steps = torch.ones(d + 1, d, dtype=torch.long, device=device)
        steps[k[:d], k[:d]] = -d
        shifts = (steps * place_values).sum(dim=1, keepdim=True)
        ahead = self._find((self.vertices.view(1, -1) + shifts).flatten()).view(d + 1, count)
        # Symmetric: u is v's neighbour ahead exactly where v is u's behind, so the search finds both (a vertex
        # with none ahead writes to a spare last slot, dropped).
        behind = torch.full((d + 1, count + 1), count, dtype=torch.long, device=device)
        behind.scatter_(1, ahead, torch.arange(count, device=device).expand(d + 1, count))
        self.neighbours = list(zip(ahead, behind[:, :count], strict=True))
        self.operators = self.scaled_operators()

    def _find(self, packed: Tensor) -> Tensor:
        """The vertex of each packed key, or the number of vertices (the empty row `filter` keeps) where none."""
        count = self.vertices.numel()
        position = torch.searchsorted(self.vertices, packed).clamp_max(count - 1)
        return torch.where(self.vertices[position] == packed, position, count)

    def scaled_operators(self, before: Tensor | None = None, after: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The splat and slice matrices, each point's values scaled by `before` (Tensor[P]) as they are splatted
        and by `after` as they are sliced, the lattice's own scale included: what `filter` applies."""
        rows, columns, weights = self._splat
        count, d = self.vertices.numel(), self.d
        splat = _csr(rows, columns, weights if before is None else weights * before[columns], (count, self.points))
        rows, columns, weights = self._slice
        weights = weights * (1.0 / (1.0 + 2.0 ** (-d)))
        if after is not None:
            weights = weights * after.repeat_interleave(d + 1)
        return splat, _csr(rows, columns, weights, (self.points, count))

    def filter(self, values: Tensor, operators: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """values (Tensor[P, C]) -> (P, C): each point's sum of the values of its group's points, weighted by the
        Gaussian kernel (splat, blur along each axis with weights 1/2, 1, 1/2, slice), through `operators`
        (`scaled_operators`) or the lattice's own."""
        splat, slice_ = operators or self.operators
        count = self.vertices.numel()
        grid = values.new_zeros(count + 1, values.shape[1])  # the last row stands for no vertex
        grid[:count] = splat @ values
        for first, second in self.neighbours:
            neighbours = grid.index_select(0, first).add_(grid.index_select(0, second))
            grid[:count].add_(neighbours, alpha=0.5)
        return slice_ @ grid[:count]


class _Kernel:
    """A Gaussian kernel on a lattice, normalised symmetrically (``D^-1/2 K D^-1/2``) as the reference does, and
    weighted: both folded into the lattice's splat and slice matrices."""

    def __init__(self, features: Tensor, group: Tensor, weight: float = 1.0) -> None:
        self.lattice = Lattice(features, group)
        ones = torch.ones(features.shape[0], 1, device=features.device)
        norm = (self.lattice.filter(ones) + 1e-20).rsqrt().flatten()
        self.operators = self.lattice.scaled_operators(norm, norm * weight)

    def __call__(self, values: Tensor) -> Tensor:
        return self.lattice.filter(values, self.operators)


class _Smoothness:
    """The smoothness kernel: a Gaussian of `sigma` cells on the grid itself (separable, truncated at 2 sigma,
    each cell with itself), normalised symmetrically as `_Kernel`; no lattice needed on a regular grid."""

    def __init__(self, sigma: float, grid: int, device: torch.device) -> None:
        self.radius = max(1, math.ceil(2 * sigma))
        offsets = torch.arange(-self.radius, self.radius + 1, dtype=torch.float64)
        self.taps = torch.exp(-0.5 * (offsets / sigma) ** 2).tolist()
        self.grid = grid
        self.norm = self._blur(torch.ones(1, grid, grid, 1, device=device)).rsqrt()

    def _blur_along(self, values: Tensor, dim: int) -> Tensor:
        """`values` blurred along `dim` with zeros beyond the grid: a few shifted adds, which a CPU runs many times
        faster than a one-channel convolution of the same taps (docs/localization.md)."""
        out = values * self.taps[self.radius]
        length = values.shape[dim]
        for offset in range(1, self.radius + 1):
            kept = length - offset
            out.narrow(dim, offset, kept).add_(values.narrow(dim, 0, kept), alpha=self.taps[self.radius - offset])
            out.narrow(dim, 0, kept).add_(values.narrow(dim, offset, kept), alpha=self.taps[self.radius + offset])
        return out

    def _blur(self, values: Tensor) -> Tensor:
        """(n, R, R, c) -> the same, blurred along both axes of the grid."""
        return self._blur_along(self._blur_along(values, 1), 2)

    def __call__(self, values: Tensor) -> Tensor:
        """values (Tensor[B * N, C]) in `dense_crf`'s flattening -> the same."""
        c = values.shape[1]
        r = self.grid
        return (self._blur(values.view(-1, r, r, c) * self.norm) * self.norm).reshape(-1, c)


def _label_softmax(energy: Tensor) -> Tensor:
    """The softmax of each cell's row of (N, C) energies, for a handful of labels C: torch's softmax over so short
    a last dimension takes three times as long on a CPU as these three whole-tensor steps."""
    shifted = energy - energy.amax(dim=1, keepdim=True)  # as torch does: no overflow, and -inf (not allowed) gives 0
    exp = shifted.exp_()
    return exp.div_(exp.sum(dim=1, keepdim=True))


def dense_crf(probabilities: Tensor, colours: Tensor, aspect: Tensor, allowed: Tensor, settings: CrfSettings) -> Tensor:
    """Mean-field marginals of the fully connected CRF with Potts compatibility.

    Args:
        probabilities (Tensor[B, C, R, R]): each cell's label probabilities (the unary is their negative log).
        colours (Tensor[B, 3, R, R]), aspect (Tensor[B, 2]): see the module docstring.
        allowed (Tensor[B, C]): bool; a label that is not allowed (a padding slot) never gains probability.

    Returns:
        Tensor[B, C, R, R]: float32 marginals, summing to 1 over the allowed labels of each cell.
    """
    if probabilities.dim() != 4 or colours.shape != (probabilities.shape[0], 3, *probabilities.shape[2:]):
        raise ValueError(
            f"`probabilities` must be (B, C, R, R) and `colours` (B, 3, R, R), got {tuple(probabilities.shape)} and "
            f"{tuple(colours.shape)}"
        )
    if allowed.shape != probabilities.shape[:2] or allowed.dtype != torch.bool:
        raise ValueError(f"`allowed` must be a bool (B, C) tensor, got {allowed.dtype} {tuple(allowed.shape)}")
    b, c, r, _ = probabilities.shape
    s = settings
    device = probabilities.device
    positions = _positions(aspect.to(device), r).reshape(b * r * r, 2)
    group = torch.arange(b, device=device).repeat_interleave(r * r)
    rgb = colours.float().flatten(2).transpose(1, 2).reshape(b * r * r, 3)
    features = torch.cat([positions / s.appearance_sigma, rgb / s.colour_sigma], dim=1)
    appearance = _Kernel(features, group, s.appearance_weight)
    smoothness = _Smoothness(s.smoothness_sigma, r, device) if s.smoothness_weight else None
    unary = probabilities.float().clamp_min(1e-5).log().flatten(2).transpose(1, 2).reshape(b * r * r, c)
    unary = unary.masked_fill(~allowed.repeat_interleave(r * r, dim=0), -torch.inf)
    marginals = _label_softmax(unary)
    for _ in range(s.iterations):
        # Potts: each label gains the kernel-weighted marginals of that label at the other cells.
        energy = unary + appearance(marginals)  # the kernel's weight included
        if smoothness is not None:
            energy = energy + s.smoothness_weight * smoothness(marginals)
        marginals = _label_softmax(energy)
    return marginals.view(b, r * r, c).transpose(1, 2).reshape(b, c, r, r)
