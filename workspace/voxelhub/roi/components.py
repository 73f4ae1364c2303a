"""Connected components of a dask mask with one global labelling, chunk by chunk.

Each chunk is labelled on its own with :func:`scipy.ndimage.label`.  Only small things come
back to the client: the number of components per chunk, the position of each component's first
voxel, its size, and the label planes on the six faces of the chunk.  Components that touch
across an inner chunk face (face, edge or corner neighbours, as the connectivity allows) are
joined by a union-find over the whole planes on both sides of each face
(:func:`scipy.sparse.csgraph.connected_components`).  The merged components are numbered in the
raster order of their first voxel, which is how :func:`scipy.ndimage.label` numbers them, so the
result equals scipy's on the whole array, label for label.

The labelled array itself stays lazy: each chunk is labelled again when it is read and its local
labels are mapped through the global table, so a volume larger than memory is never held whole.

:mod:`voxelhub.features.texture.blockwise` merges grey-level zones across chunks in the same way,
but it returns per-zone statistics rather than the label table needed here to relabel voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from numpy.typing import NDArray
from scipy import ndimage, sparse
from scipy.sparse import csgraph

__all__ = [
    "Components",
    "connected_components",
    "label_components",
    "largest_component",
    "remove_small_components",
]

IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class Components:
    """A lazy global labelling: labels (0 = background), their number and voxel counts."""

    labels: da.Array
    count: int
    sizes: IntArray  # sizes[k] = voxels with label k (sizes[0] = background)


@dataclass(frozen=True)
class _BlockSummary:
    count: int
    first: IntArray  # global flat index of each local component's first voxel
    size: IntArray  # voxels per local component
    faces: dict[tuple[int, int], IntArray]  # (axis, 0 = low side | 1 = high side) → plane


def structure_for(ndim: int, connectivity: int) -> NDArray[np.bool_]:
    """Neighbourhood: 1 = faces only (6 in 3-D), ``ndim`` = faces, edges and corners (26)."""
    if not 1 <= connectivity <= ndim:
        raise ValueError(f"connectivity must be between 1 and {ndim}, got {connectivity}")
    return ndimage.generate_binary_structure(ndim, connectivity)


def _summarise(
    block: NDArray[Any], structure: NDArray[np.bool_], start: Sequence[int], shape: Sequence[int]
) -> _BlockSummary:
    labels, n = ndimage.label(block, structure=structure)
    flat = labels.ravel()
    # scipy numbers components by first appearance: label k first shows where the running
    # maximum first reaches k
    running = np.maximum.accumulate(flat)
    firsts = np.flatnonzero(np.diff(running, prepend=0) > 0)
    local = np.unravel_index(firsts, labels.shape)
    glob = tuple(c + s for c, s in zip(local, start, strict=True))
    first = np.ravel_multi_index(glob, tuple(shape)).astype(np.int64)
    size = np.bincount(flat, minlength=n + 1)[1:].astype(np.int64)
    faces = {}
    for axis in range(labels.ndim):
        faces[(axis, 0)] = np.take(labels, 0, axis=axis)
        faces[(axis, 1)] = np.take(labels, -1, axis=axis)
    return _BlockSummary(int(n), first, size, faces)


def _starts(chunks: tuple[tuple[int, ...], ...]) -> list[IntArray]:
    return [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(np.int64) for c in chunks]


def _plane(
    summaries: dict[tuple[int, ...], _BlockSummary],
    offsets: dict[tuple[int, ...], int],
    grid: tuple[int, ...],
    axis: int,
    index: int,
    side: int,
) -> IntArray:
    """The whole plane of provisional global ids on one side of the face after block ``index``."""
    other = [a for a in range(len(grid)) if a != axis]

    def piece(idx: tuple[int, ...]) -> IntArray:
        face = summaries[idx].faces[(axis, side)].astype(np.int64)
        return np.where(face > 0, face + offsets[idx], 0)

    def nest(level: int, fixed: dict[int, int]) -> Any:
        if level == len(other):
            idx = tuple(index if a == axis else fixed[a] for a in range(len(grid)))
            return piece(idx)
        a = other[level]
        return [nest(level + 1, {**fixed, a: i}) for i in range(grid[a])]

    return np.block(nest(0, {}))


def _shifted_pairs(lo: IntArray, hi: IntArray, shift: Sequence[int]) -> IntArray:
    """Pairs (lo[p], hi[p + shift]) where both are foreground."""
    src, dst = [], []
    for d, n in zip(shift, lo.shape, strict=True):
        src.append(slice(max(0, -d), n - max(0, d)))
        dst.append(slice(max(0, d), n + min(0, d)))
    a, b = lo[tuple(src)].ravel(), hi[tuple(dst)].ravel()
    ok = (a > 0) & (b > 0)
    return np.stack([a[ok], b[ok]], axis=1)


def _global_table(
    summaries: dict[tuple[int, ...], _BlockSummary],
    grid: tuple[int, ...],
    structure: NDArray[np.bool_],
) -> tuple[dict[tuple[int, ...], int], IntArray, IntArray]:
    """Per-block id offsets, the provisional id → final label table, and final sizes."""
    offsets: dict[tuple[int, ...], int] = {}
    total = 0
    for idx in np.ndindex(*grid):
        offsets[idx] = total
        total += summaries[idx].count
    if total == 0:
        return offsets, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
    first = np.concatenate([summaries[idx].first for idx in np.ndindex(*grid)])
    size = np.concatenate([summaries[idx].size for idx in np.ndindex(*grid)])
    ndim = len(grid)
    pairs: list[IntArray] = [np.zeros((0, 2), dtype=np.int64)]
    for axis in range(ndim):
        other = [a for a in range(ndim) if a != axis]
        shifts = [
            tuple(s[a] - 1 for a in other)
            for s in np.argwhere(structure)
            if s[axis] == 2  # neighbours one step further along the axis, anywhere in-plane
        ]
        for i in range(grid[axis] - 1):
            lo = _plane(summaries, offsets, grid, axis, i, 1)
            hi = _plane(summaries, offsets, grid, axis, i + 1, 0)
            pairs.extend(_shifted_pairs(lo, hi, shift) for shift in shifts)
    edges = np.concatenate(pairs) - 1  # provisional ids 1..total → nodes 0..total-1
    graph = sparse.coo_matrix(
        (np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(total, total)
    )
    n_comp, comp = csgraph.connected_components(graph, directed=False)
    comp_first = np.full(n_comp, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(comp_first, comp, first)
    rank = np.empty(n_comp, dtype=np.int64)
    rank[np.argsort(comp_first, kind="stable")] = np.arange(1, n_comp + 1)
    table = np.concatenate([[0], rank[comp]]).astype(np.int64)
    sizes = np.bincount(rank[comp], weights=size, minlength=n_comp + 1).astype(np.int64)
    return offsets, table, sizes


def _relabel(
    block: NDArray[Any],
    structure: NDArray[np.bool_],
    offsets: NDArray[np.int64],
    table: IntArray,
    dtype: np.dtype,
    block_info: dict[Any, Any] | None = None,
) -> NDArray[Any]:
    assert block_info is not None
    idx = tuple(block_info[0]["chunk-location"])
    labels, _ = ndimage.label(block, structure=structure)
    provisional = np.where(labels > 0, labels + offsets[idx], 0)
    out: NDArray[Any] = table[provisional].astype(dtype)
    return out


def _as_dask(mask: Any) -> da.Array:
    data = mask.data if isinstance(mask, xr.DataArray) else mask
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=-1)
    return data.astype(bool)


def _like(result: da.Array, mask: Any, name: str) -> Any:
    if isinstance(mask, xr.DataArray):
        return xr.DataArray(result, dims=mask.dims, coords=mask.coords, attrs=mask.attrs, name=name)
    return result


def label_components(mask: Any, connectivity: int = 1) -> Components:
    """Label the connected components of a mask (numpy, dask or xarray), chunk by chunk.

    One pass reads every chunk to find how components join across chunk borders; the
    returned :attr:`Components.labels` is lazy and labels each chunk again when computed.
    """
    data = _as_dask(mask)
    structure = structure_for(data.ndim, connectivity)
    grid = tuple(len(c) for c in data.chunks)
    starts = _starts(data.chunks)
    shape = tuple(int(s) for s in data.shape)
    blocks = data.to_delayed()
    index = list(np.ndindex(*grid))
    summarise = dask.delayed(_summarise, pure=True)
    parts = [
        summarise(blocks[idx], structure, [int(starts[a][i]) for a, i in enumerate(idx)], shape)
        for idx in index
    ]
    summaries = dict(zip(index, dask.compute(*parts), strict=True))
    offsets, table, sizes = _global_table(summaries, grid, structure)
    count = len(sizes) - 1
    dtype = np.dtype(np.int32 if count < np.iinfo(np.int32).max else np.int64)
    offset_grid = np.zeros(grid, dtype=np.int64)
    for idx, off in offsets.items():
        offset_grid[idx] = off
    labels = da.map_blocks(
        _relabel,
        data,
        structure,
        offset_grid,
        table,
        dtype,
        dtype=dtype,
        meta=np.empty((0,) * data.ndim, dtype),
    )
    return Components(labels, count, sizes)


def connected_components(mask: Any, connectivity: int = 1) -> tuple[Any, int]:
    """Labels and their number, as :func:`scipy.ndimage.label` (and equal to it) on dask.

    ``connectivity`` 1 joins face neighbours (scipy's default), ``mask.ndim`` joins edge and
    corner neighbours too.  An xarray input gives an xarray result on the same coordinates.
    """
    comps = label_components(mask, connectivity)
    return _like(comps.labels, mask, "labels"), comps.count


def largest_component(mask: Any, connectivity: int = 1) -> Any:
    """The largest connected component as a mask (ties: the first in raster order)."""
    comps = label_components(mask, connectivity)
    if comps.count == 0:
        return _like(da.zeros_like(_as_dask(mask)), mask, "largest_component")
    keep = int(np.argmax(comps.sizes[1:])) + 1
    return _like(comps.labels == keep, mask, "largest_component")


def remove_small_components(mask: Any, min_voxels: int, connectivity: int = 1) -> Any:
    """The mask without its components smaller than ``min_voxels``."""
    comps = label_components(mask, connectivity)
    keep = np.flatnonzero(comps.sizes >= min_voxels)
    keep = keep[keep > 0]
    return _like(da.isin(comps.labels, keep), mask, "mask")
