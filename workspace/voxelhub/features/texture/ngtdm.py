"""Neighbourhood grey tone difference matrix (IBSI 3.10)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from voxelhub.features.texture._common import Array, dims, neighbour_sums, zone_aggregate

__all__ = ["features", "from_tables", "matrices", "tables"]


def tables(
    grey: NDArray[np.int64],
    n_levels: int,
    planar: bool,
    *,
    core: bool = False,
    z0: int = 0,
    nz: int | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Integer tables behind the NGTDM, by slice, grey level and neighbour count c.

    ``counts[z, i, c]`` voxels of level i + 1 with c ROI neighbours, and
    ``absdev[z, i, c]`` the sum of ``|(i + 1) c - sum of neighbours|`` over them, so that
    ``s_i = sum_c absdev / c``. Integers add up exactly in any order, which lets chunked
    extraction reproduce the single-block matrix bit for bit.

    With ``core`` the outer voxel layer of ``grey`` is a halo: it is read as neighbours but
    not counted. ``z0`` is the global index of the first counted slice and ``nz`` the number
    of slices (2D) of the whole image.
    """
    count = neighbour_sums(grey, planar, lambda nb: (nb > 0).astype(np.float64))
    total = neighbour_sums(grey, planar, lambda nb: nb.astype(np.float64))
    if core:
        inner = (slice(1, -1),) * 3
        grey, count, total = grey[inner], count[inner], total[inner]
    valid = (grey > 0) & (count > 0)
    c = count[valid].astype(np.int64)
    g = grey[valid]
    dev = np.abs(g * c - total[valid].astype(np.int64))
    n_slices = (grey.shape[0] if nz is None else nz) if planar else 1
    z = np.nonzero(valid)[0] + z0 if planar else np.zeros(g.size, dtype=np.int64)
    width = 9 if planar else 27
    counts = np.zeros((n_slices, n_levels, width), dtype=np.int64)
    absdev = np.zeros((n_slices, n_levels, width), dtype=np.int64)
    np.add.at(counts, (z, g - 1, c), 1)
    np.add.at(absdev, (z, g - 1, c), dev)
    return counts, absdev


def from_tables(counts: NDArray[np.int64], absdev: NDArray[np.int64]) -> tuple[Array, Array]:
    """The NGTDM (nz|1, 2, Ng) rows ``[n_i, s_i]`` and the voxels per matrix, from :func:`tables`."""
    c = np.arange(counts.shape[-1], dtype=np.float64)
    c[0] = 1.0  # column 0 (no neighbour) is always empty
    out = np.zeros((counts.shape[0], 2, counts.shape[1]), dtype=np.float64)
    out[:, 0] = counts.sum(axis=2)
    out[:, 1] = (absdev / c).sum(axis=2)
    return out, out[:, 0].sum(axis=1)


def matrices(grey: NDArray[np.int64], n_levels: int, planar: bool) -> tuple[Array, Array]:
    """Per slice (2D) or whole (3D): rows ``[n_i, s_i]`` per grey level, shape (nz|1, 2, Ng).

    Only neighbours inside the ROI count, and voxels without any such neighbour are left out
    (IBSI 3.10).
    """
    return from_tables(*tables(grey, n_levels, planar))


def _features(m: Array, _n: Array) -> dict[str, Array]:
    """The five NGTDM features of a batch (K, 2, Ng)."""
    res: dict[str, list[float]] = {
        k: [] for k in ("coarseness", "contrast", "busyness", "complexity", "strength")
    }
    for n_i, s_i in m:
        present = n_i > 0
        lv = np.arange(1, n_i.size + 1, dtype=np.float64)[present]
        nvc = n_i.sum()
        p, s = n_i[present] / nvc, s_i[present]
        ngp = p.size
        ps = p * s
        d = lv[:, None] - lv[None, :]
        res["coarseness"].append(1.0 / ps.sum() if ps.sum() > 0 else 1e6)
        if ngp > 1:
            pp = p[:, None] * p[None, :]
            res["contrast"].append((pp * d**2).sum() / (ngp * (ngp - 1)) * s.sum() / nvc)
            busy_den = np.abs(lv[:, None] * p[:, None] - lv[None, :] * p[None, :]).sum()
            res["busyness"].append(ps.sum() / busy_den if busy_den > 0 else 0.0)
        else:
            res["contrast"].append(0.0)
            res["busyness"].append(0.0)
        psum = p[:, None] + p[None, :]
        res["complexity"].append((np.abs(d) * (ps[:, None] + ps[None, :]) / psum).sum() / nvc)
        res["strength"].append((psum * d**2).sum() / s.sum() if s.sum() > 0 else 0.0)
    return {f"ngt_{k}": np.asarray(v) for k, v in res.items()}


def features(
    grey: NDArray[np.int64], n_levels: int, aggregations: Iterable[str]
) -> dict[str, float]:
    """NGTDM features for each requested dimension (3D, 2D, 2_5D), keyed by IBSI tag."""
    out: dict[str, float] = {}
    for dim in dims(aggregations):
        m, n = matrices(grey, n_levels, dim != "3D")
        out.update(zone_aggregate(m, n, dim, _features))
    return out
