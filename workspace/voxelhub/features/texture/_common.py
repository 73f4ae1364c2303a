"""What the texture families share: neighbour offsets, shifted views, aggregation, and the
summary statistics of run/zone/distance/dependence matrices."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

OFFSETS_3D: tuple[tuple[int, int, int], ...] = tuple(
    (dz, dy, dx)
    for dz in (-1, 0, 1)
    for dy in (-1, 0, 1)
    for dx in (-1, 0, 1)
    if (dz, dy, dx) > (0, 0, 0)
)
"""The 13 unique directions at Chebyshev distance 1 (the other 13 are their opposites)."""

OFFSETS_2D: tuple[tuple[int, int, int], ...] = tuple(o for o in OFFSETS_3D if o[0] == 0)
"""The 4 in-plane directions."""


def dims(aggregations: Iterable[str]) -> list[str]:
    """The dimensions (3D, 2D, 2_5D) asked for, in a stable order."""
    wanted = {a.rsplit("_", 1)[0] if a.endswith(("_avg", "_comb")) else a for a in aggregations}
    return [d for d in ("3D", "2D", "2_5D") if d in wanted]


def shifted(
    a: NDArray[np.int64], offset: tuple[int, int, int]
) -> tuple[NDArray[np.int64], NDArray[np.int64], slice]:
    """Views ``(a[p], a[p + offset])`` over all p where both exist, and the z slice of p."""
    src, dst = [], []
    for d, n in zip(offset, a.shape, strict=True):
        if d >= 0:
            src.append(slice(0, n - d))
            dst.append(slice(d, n))
        else:
            src.append(slice(-d, n))
            dst.append(slice(0, n + d))
    return a[tuple(src)], a[tuple(dst)], src[0]


def neighbour_sums(
    grey: NDArray[np.int64], planar: bool, func: Callable[[NDArray[np.int64]], Array]
) -> Array:
    """Sum over the 26 (or 8 in-plane) neighbours q of ``func(grey[p], grey[q])``-like terms.

    ``func`` receives the neighbour values in a padded-and-shifted array aligned with ``grey``
    (0 outside the image), so callers can compare them with ``grey`` directly.
    """
    out = np.zeros(grey.shape, dtype=np.float64)
    padded = np.pad(grey, 1)
    nz, ny, nx = grey.shape
    for dz in (0,) if planar else (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dz == dy == dx == 0:
                    continue
                nb = padded[1 + dz : 1 + dz + nz, 1 + dy : 1 + dy + ny, 1 + dx : 1 + dx + nx]
                out += func(nb)
    return out


def entropy(p: Array, axis: tuple[int, ...]) -> Array:
    """Shannon entropy in bits, with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return -np.asarray(terms.sum(axis=axis))


def size_matrix_features(
    m: Array, n_voxels: Array, prefix: str, names: dict[str, str], energy: bool = False
) -> dict[str, Array]:
    """The shared statistics of a grey level x size matrix batch ``m`` (K, Ng, Nj).

    Row i is grey level i + 1, column j is size j + 1 (run length, zone size, distance or
    dependence count). ``names`` maps the generic names (``s`` short/small, ``l`` long/large,
    ``nu``, ``perc``, ``var``, ``entr``) to the family's tag parts.
    """
    ng, nj = m.shape[1], m.shape[2]
    i = np.arange(1, ng + 1, dtype=np.float64)[None, :, None]
    j = np.arange(1, nj + 1, dtype=np.float64)[None, None, :]
    ns = m.sum(axis=(1, 2))
    p = m / ns[:, None, None]
    rows = m.sum(axis=2)
    cols = m.sum(axis=1)
    mu_i = (p * i).sum(axis=(1, 2))
    mu_j = (p * j).sum(axis=(1, 2))
    s, lg = names["s"], names["l"]
    out = {
        f"{s}e": (p / j**2).sum(axis=(1, 2)),
        f"{lg}e": (p * j**2).sum(axis=(1, 2)),
        names["lge"]: (p / i**2).sum(axis=(1, 2)),
        names["hge"]: (p * i**2).sum(axis=(1, 2)),
        f"{s}lge": (p / (i**2 * j**2)).sum(axis=(1, 2)),
        f"{s}hge": (p * i**2 / j**2).sum(axis=(1, 2)),
        f"{lg}lge": (p * j**2 / i**2).sum(axis=(1, 2)),
        f"{lg}hge": (p * i**2 * j**2).sum(axis=(1, 2)),
        "glnu": (rows**2).sum(axis=1) / ns,
        "glnu_norm": (rows**2).sum(axis=1) / ns**2,
        f"{names['nu']}": (cols**2).sum(axis=1) / ns,
        f"{names['nu']}_norm": (cols**2).sum(axis=1) / ns**2,
        names["perc"]: ns / n_voxels,
        "gl_var": (p * (i - mu_i[:, None, None]) ** 2).sum(axis=(1, 2)),
        f"{names['var']}_var": (p * (j - mu_j[:, None, None]) ** 2).sum(axis=(1, 2)),
        f"{names['var']}_entr": entropy(p, axis=(1, 2)),
    }
    if energy:
        out[f"{names['var']}_energy"] = (p**2).sum(axis=(1, 2))
    return {f"{prefix}_{k}": v for k, v in out.items()}


def mean_over(values: dict[str, Array], suffix: str) -> dict[str, float]:
    """Average each feature over its batch axis and add the aggregation suffix."""
    return {f"{k}_{suffix}": float(np.mean(v)) for k, v in values.items()}


MatrixFeatures = Callable[[Array, Array], dict[str, Array]]


def aggregate(
    mats: Array, n_voxels: Array, aggregations: Iterable[str], func: MatrixFeatures
) -> dict[str, float]:
    """Apply the IBSI texture aggregations to per-direction, per-slice matrices.

    ``mats`` has shape (D, nz, ...) and ``n_voxels`` (D, nz) the voxels each matrix saw.
    ``3D``/``2_5D`` ``avg``: merge slices, features per direction, mean over directions;
    ``comb``: merge directions too. ``2D_avg``: features per slice and direction, averaged;
    ``2D_comb``: per slice with directions merged. Empty matrices are left out of the mean.
    """
    out: dict[str, float] = {}
    for agg in aggregations:
        dim, how = agg.rsplit("_", 1)
        if dim in ("3D", "2_5D"):
            m, n = mats.sum(axis=1), n_voxels.sum(axis=1)
            if how == "comb":
                m, n = m.sum(axis=0, keepdims=True), n.sum(axis=0, keepdims=True)
        elif how == "avg":
            m, n = mats, n_voxels
        else:
            m, n = mats.sum(axis=0, keepdims=True), n_voxels.sum(axis=0, keepdims=True)
        m = m.reshape((-1, *mats.shape[2:]))
        n = n.reshape(-1)
        out.update({f"{k}_{agg}": v for k, v in _mean_features(m, n, func).items()})
    return out


def _mean_features(m: Array, n: Array, func: MatrixFeatures) -> dict[str, float]:
    """Features of each non-empty matrix, averaged; NaN when every matrix is empty."""
    keep = m.reshape(m.shape[0], -1).sum(axis=1) > 0
    if keep.any():
        return {k: float(np.mean(v)) for k, v in func(m[keep], n[keep]).items()}
    with np.errstate(all="ignore"):
        names = func(np.ones((1, *m.shape[1:])), np.ones(1))
    return dict.fromkeys(names, float("nan"))


def zone_aggregate(
    mats: Array, n_voxels: Array, dim: str, func: MatrixFeatures
) -> dict[str, float]:
    """Zone families: ``3D`` one matrix; ``2D`` features per slice, averaged; ``2_5D`` the
    slice matrices merged. ``mats`` is (nz, ...) for 2D/2_5D and (1, ...) for 3D."""
    if dim == "2_5D":
        mats, n_voxels = mats.sum(axis=0, keepdims=True), n_voxels.sum(keepdims=True)
    return {f"{k}_{dim}": v for k, v in _mean_features(mats, n_voxels, func).items()}
