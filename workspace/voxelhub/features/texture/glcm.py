"""Grey level co-occurrence matrix (IBSI 3.6): symmetric, Chebyshev distance 1."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from voxelhub.features.texture._common import (
    OFFSETS_2D,
    OFFSETS_3D,
    Array,
    aggregate,
    entropy,
    shifted,
)

__all__ = ["features", "matrices"]


def matrices(
    grey: NDArray[np.int64],
    n_levels: int,
    offsets: Iterable[tuple[int, int, int]],
    per_slice: bool = False,
) -> Array:
    """Symmetric co-occurrence counts per direction (and slice), shape (D, nz or 1, Ng, Ng).

    Pairs count only when both voxels are in the ROI.
    """
    nz, ng = (grey.shape[0] if per_slice else 1), n_levels
    out = []
    for off in offsets:
        a, b, zsl = shifted(grey, off)
        ok = (a > 0) & (b > 0)
        idx = (a[ok] - 1) * ng + (b[ok] - 1)
        if per_slice:
            z = np.broadcast_to(np.arange(grey.shape[0])[zsl][:, None, None], a.shape)[ok]
            idx = idx + z * ng * ng
        counts = np.bincount(idx, minlength=nz * ng * ng).astype(np.float64)
        counts = counts.reshape(nz, ng, ng)
        out.append(counts + counts.transpose(0, 2, 1))
    return np.stack(out)


def _features(p_counts: Array, _n: Array) -> dict[str, Array]:
    """The 25 IBSI GLCM features of a batch of matrices (K, Ng, Ng)."""
    k, ng, _ = p_counts.shape
    p = p_counts / p_counts.sum(axis=(1, 2))[:, None, None]
    lv = np.arange(1, ng + 1, dtype=np.float64)
    i = lv[None, :, None]
    j = lv[None, None, :]
    px = p.sum(axis=2)
    py = p.sum(axis=1)
    mu = (px * lv).sum(axis=1)
    var = (px * (lv - mu[:, None]) ** 2).sum(axis=1)
    diff = np.abs(lv[:, None] - lv[None, :]).astype(np.int64)
    summ = (lv[:, None] + lv[None, :]).astype(np.int64)
    p_diff: Array = np.stack([np.bincount(diff.ravel(), q.ravel(), minlength=ng) for q in p])
    p_sum: Array = np.stack([np.bincount(summ.ravel(), q.ravel(), minlength=2 * ng + 1) for q in p])
    kd = np.arange(ng, dtype=np.float64)
    ks = np.arange(2 * ng + 1, dtype=np.float64)
    mu_d = (p_diff * kd).sum(axis=1)
    mu_s = (p_sum * ks).sum(axis=1)
    hxy = entropy(p, axis=(1, 2))
    hx = entropy(px, axis=(1,))
    pxpy = px[:, :, None] * py[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pxpy = np.where(pxpy > 0, np.log2(np.where(pxpy > 0, pxpy, 1.0)), 0.0)
    hxy1 = -(p * log_pxpy).sum(axis=(1, 2))
    hxy2 = -(pxpy * log_pxpy).sum(axis=(1, 2))
    d2 = (i - j) ** 2
    c = i + j - 2.0 * mu[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_var = np.where(kd > 0, p_diff / np.where(kd > 0, kd, 1.0) ** 2, 0.0).sum(axis=1)
        corr = ((p * i * j).sum(axis=(1, 2)) - mu * mu) / var
        info1 = (hxy - hxy1) / hx
    return {
        "cm_joint_max": p.reshape(k, -1).max(axis=1),
        "cm_joint_avg": mu,
        "cm_joint_var": (p * (i - mu[:, None, None]) ** 2).sum(axis=(1, 2)),
        "cm_joint_entr": hxy,
        "cm_diff_avg": mu_d,
        "cm_diff_var": (p_diff * (kd - mu_d[:, None]) ** 2).sum(axis=1),
        "cm_diff_entr": entropy(p_diff, axis=(1,)),
        "cm_sum_avg": mu_s,
        "cm_sum_var": (p_sum * (ks - mu_s[:, None]) ** 2).sum(axis=1),
        "cm_sum_entr": entropy(p_sum, axis=(1,)),
        "cm_energy": (p**2).sum(axis=(1, 2)),
        "cm_contrast": (p * d2).sum(axis=(1, 2)),
        "cm_dissimilarity": (p * np.sqrt(d2)).sum(axis=(1, 2)),
        "cm_inv_diff": (p / (1.0 + np.sqrt(d2))).sum(axis=(1, 2)),
        "cm_inv_diff_norm": (p / (1.0 + np.sqrt(d2) / ng)).sum(axis=(1, 2)),
        "cm_inv_diff_mom": (p / (1.0 + d2)).sum(axis=(1, 2)),
        "cm_inv_diff_mom_norm": (p / (1.0 + d2 / ng**2)).sum(axis=(1, 2)),
        "cm_inv_var": inv_var,
        "cm_corr": corr,
        "cm_auto_corr": (p * i * j).sum(axis=(1, 2)),
        "cm_clust_tend": (p * c**2).sum(axis=(1, 2)),
        "cm_clust_shade": (p * c**3).sum(axis=(1, 2)),
        "cm_clust_prom": (p * c**4).sum(axis=(1, 2)),
        "cm_info_corr1": info1,
        "cm_info_corr2": np.sqrt(np.clip(1.0 - np.exp(-2.0 * (hxy2 - hxy)), 0.0, None)),
    }


def features(
    grey: NDArray[np.int64], n_levels: int, aggregations: Iterable[str]
) -> dict[str, float]:
    """GLCM features for each requested aggregation, keyed by IBSI tag."""
    aggs = list(aggregations)
    out: dict[str, float] = {}
    want3 = [a for a in aggs if a.startswith("3D")]
    want2 = [a for a in aggs if not a.startswith("3D")]
    if want3:
        m = matrices(grey, n_levels, OFFSETS_3D)
        out.update(aggregate(m, np.zeros(m.shape[:2]), want3, _features))
    if want2:
        m = matrices(grey, n_levels, OFFSETS_2D, per_slice=True)
        out.update(aggregate(m, np.zeros(m.shape[:2]), want2, _features))
    return out
