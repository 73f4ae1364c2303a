"""Grey level run length matrix (IBSI 3.7)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from voxelhub.features.texture._common import (
    OFFSETS_2D,
    OFFSETS_3D,
    Array,
    aggregate,
    size_matrix_features,
)

__all__ = ["features", "matrices"]

_NAMES = {
    "s": "sr",
    "l": "lr",
    "lge": "lgre",
    "hge": "hgre",
    "nu": "rlnu",
    "perc": "r_perc",
    "var": "rl",
}


def _runs(
    grey: NDArray[np.int64], direction: tuple[int, int, int]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Grey level, length and slice of every run along ``direction`` inside the ROI.

    Each voxel is keyed by the line through it (its projection along the direction) and its
    position on that line; after sorting, a run is a stretch of consecutive positions with the
    same grey level. O(N log N) in the ROI voxels, no Python loop over runs.
    """
    pos = np.nonzero(grey)
    levels = grey[pos]
    d = np.asarray(direction)
    axis = int(np.flatnonzero(d)[0])
    t = pos[axis] * d[axis]  # position along the line
    base = [p - t * d[k] for k, p in enumerate(pos)]  # the line's point with coordinate 0
    width = 3 * max(grey.shape)  # base coordinates lie in [-max, 2 max)
    key = np.zeros(levels.shape, dtype=np.int64)
    for k in range(3):
        key = key * width + (base[k] + width // 3)
    order = np.lexsort((t, key))
    key, t, levels = key[order], t[order], levels[order]
    z = pos[0][order]
    new_run = np.ones(levels.shape, dtype=bool)
    new_run[1:] = (key[1:] != key[:-1]) | (t[1:] != t[:-1] + 1) | (levels[1:] != levels[:-1])
    starts = np.flatnonzero(new_run)
    lengths = np.diff(np.append(starts, levels.size))
    return levels[starts], lengths, z[starts]


def matrices(
    grey: NDArray[np.int64],
    n_levels: int,
    offsets: Iterable[tuple[int, int, int]],
    per_slice: bool = False,
) -> tuple[Array, Array]:
    """Run length counts (D, nz or 1, Ng, Lmax) and the ROI voxels behind each matrix."""
    nz = grey.shape[0] if per_slice else 1
    runs = [_runs(grey, off) for off in offsets]
    lmax = max((int(r[1].max()) for r in runs if r[1].size), default=1)
    out = np.zeros((len(runs), nz, n_levels, lmax), dtype=np.float64)
    for k, (g, length, z) in enumerate(runs):
        zz = z if per_slice else np.zeros_like(z)
        np.add.at(out[k], (zz, g - 1, length - 1), 1.0)
    in_roi = (grey > 0).reshape(grey.shape[0], -1).sum(axis=1).astype(np.float64)
    n_vox = in_roi if per_slice else np.array([in_roi.sum()])
    return out, np.broadcast_to(n_vox, out.shape[:2]).copy()


def _features(m: Array, n_voxels: Array) -> dict[str, Array]:
    return size_matrix_features(m, n_voxels, "rlm", _NAMES)


def features(
    grey: NDArray[np.int64], n_levels: int, aggregations: Iterable[str]
) -> dict[str, float]:
    """GLRLM features for each requested aggregation, keyed by IBSI tag."""
    aggs = list(aggregations)
    out: dict[str, float] = {}
    want3 = [a for a in aggs if a.startswith("3D")]
    want2 = [a for a in aggs if not a.startswith("3D")]
    if want3:
        out.update(aggregate(*matrices(grey, n_levels, OFFSETS_3D), want3, _features))
    if want2:
        m, n = matrices(grey, n_levels, OFFSETS_2D, per_slice=True)
        out.update(aggregate(m, n, want2, _features))
    return out
