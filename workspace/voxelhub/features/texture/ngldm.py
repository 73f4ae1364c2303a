"""Neighbouring grey level dependence matrix (IBSI 3.11)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from voxelhub.features.texture._common import (
    Array,
    dims,
    neighbour_sums,
    size_matrix_features,
    zone_aggregate,
)

__all__ = ["counts", "features", "matrices"]

_NAMES = {
    "s": "ld",
    "l": "hd",
    "lge": "lgce",
    "hge": "hgce",
    "nu": "dcnu",
    "perc": "dc_perc",
    "var": "dc",
}


def counts(
    grey: NDArray[np.int64],
    n_levels: int,
    planar: bool,
    alpha: int = 0,
    *,
    core: bool = False,
    z0: int = 0,
    nz: int | None = None,
) -> Array:
    """Grey level x dependence counts (k = 1 + dependent neighbours in the ROI).

    Shape (nz|1, Ng, 27 or 9). With ``core`` the outer voxel layer of ``grey`` is a halo,
    read as neighbours but not counted; ``z0`` and ``nz`` place a chunk's slices in the
    whole image (2D).
    """
    dep = neighbour_sums(
        grey, planar, lambda nb: ((nb > 0) & (np.abs(nb - grey) <= alpha)).astype(np.float64)
    )
    if core:
        inner = (slice(1, -1),) * 3
        grey, dep = grey[inner], dep[inner]
    inside = grey > 0
    k = dep[inside].astype(np.int64)  # 0-based column = dependence count - 1
    g = grey[inside] - 1
    n_slices = (grey.shape[0] if nz is None else nz) if planar else 1
    z = np.nonzero(inside)[0] + z0 if planar else np.zeros(g.size, dtype=np.int64)
    out = np.zeros((n_slices, n_levels, 9 if planar else 27), dtype=np.float64)
    np.add.at(out, (z, g, k), 1.0)
    return out


def matrices(
    grey: NDArray[np.int64], n_levels: int, planar: bool, alpha: int = 0
) -> tuple[Array, Array]:
    """Grey level x dependence counts, shape (nz|1, Ng, 27 or 9), and the ROI voxels per
    matrix."""
    out = counts(grey, n_levels, planar, alpha)
    return out, out.sum(axis=(1, 2))


def _features(m: Array, n_voxels: Array) -> dict[str, Array]:
    return size_matrix_features(m, n_voxels, "ngl", _NAMES, energy=True)


def features(
    grey: NDArray[np.int64], n_levels: int, aggregations: Iterable[str], alpha: int = 0
) -> dict[str, float]:
    """NGLDM features for each requested dimension (3D, 2D, 2_5D), keyed by IBSI tag."""
    out: dict[str, float] = {}
    for dim in dims(aggregations):
        m, n = matrices(grey, n_levels, dim != "3D", alpha)
        out.update(zone_aggregate(m, n, dim, _features))
    return out
