"""Neighbourhood grey tone difference matrix (IBSI 3.10)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from voxelhub.features.texture._common import Array, dims, neighbour_sums, zone_aggregate

__all__ = ["features", "matrices"]


def matrices(grey: NDArray[np.int64], n_levels: int, planar: bool) -> tuple[Array, Array]:
    """Per slice (2D) or whole (3D): rows ``[n_i, s_i]`` per grey level, shape (nz|1, 2, Ng).

    Only neighbours inside the ROI count, and voxels without any such neighbour are left out
    (IBSI 3.10).
    """
    inside = grey > 0
    count = neighbour_sums(grey, planar, lambda nb: (nb > 0).astype(np.float64))
    total = neighbour_sums(grey, planar, lambda nb: nb.astype(np.float64))
    valid = inside & (count > 0)
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    g = grey[valid] - 1
    diff = np.abs(grey[valid] - mean[valid])
    nz = grey.shape[0] if planar else 1
    z = np.nonzero(valid)[0] if planar else np.zeros(g.size, dtype=np.int64)
    out = np.zeros((nz, 2, n_levels), dtype=np.float64)
    np.add.at(out[:, 0], (z, g), 1.0)
    np.add.at(out[:, 1], (z, g), diff)
    return out, out[:, 0].sum(axis=1)


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
