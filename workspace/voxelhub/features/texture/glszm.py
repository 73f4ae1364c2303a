"""Grey level size zone matrix (IBSI 3.8): zones of equal grey level, 26- (8- in 2D) connected."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from voxelhub.features.texture._common import Array, dims, size_matrix_features, zone_aggregate

__all__ = ["Zones", "features", "zones"]

_NAMES = {
    "s": "sz",
    "l": "lz",
    "lge": "lgze",
    "hge": "hgze",
    "nu": "zsnu",
    "perc": "z_perc",
    "var": "zs",
}


class Zones:
    """Connected zones of equal grey level: a label image and per-zone level, size, slice."""

    def __init__(self, grey: NDArray[np.int64], planar: bool) -> None:
        structure = np.ones((3, 3, 3), dtype=bool)
        if planar:  # no connection across slices: zones stay inside one slice
            structure[0] = structure[2] = False
        labels = np.zeros(grey.shape, dtype=np.int64)
        levels: list[NDArray[np.int64]] = []
        n_total = 0
        for g in np.unique(grey[grey > 0]):
            lab, n = ndimage.label(grey == g, structure=structure)
            labels[lab > 0] = lab[lab > 0] + n_total
            levels.append(np.full(n, g, dtype=np.int64))
            n_total += n
        self.labels = labels
        self.level = np.concatenate(levels) if levels else np.zeros(0, dtype=np.int64)
        flat = labels.ravel()
        self.size = np.bincount(flat, minlength=n_total + 1)[1:]
        zslice = np.zeros(n_total + 1, dtype=np.int64)
        zslice[flat] = np.repeat(np.arange(grey.shape[0]), grey.shape[1] * grey.shape[2])
        self.slice = zslice[1:]


def zones(grey: NDArray[np.int64], planar: bool = False) -> Zones:
    """Label the zones of ``grey`` (0 = outside the ROI)."""
    return Zones(grey, planar)


def zone_matrices(
    z: Zones, values: NDArray[np.int64], n_levels: int, grey: NDArray[np.int64], planar: bool
) -> tuple[Array, Array]:
    """Grey level x ``values`` (size or distance) counts per slice (2D) or one (3D)."""
    nz = grey.shape[0] if planar else 1
    vmax = int(values.max()) if values.size else 1
    out = np.zeros((nz, n_levels, vmax), dtype=np.float64)
    zz = z.slice if planar else np.zeros_like(z.slice)
    np.add.at(out, (zz, z.level - 1, values - 1), 1.0)
    in_roi = (grey > 0).reshape(grey.shape[0], -1).sum(axis=1).astype(np.float64)
    return out, (in_roi if planar else np.array([in_roi.sum()]))


def _features(m: Array, n_voxels: Array) -> dict[str, Array]:
    return size_matrix_features(m, n_voxels, "szm", _NAMES)


def features(
    grey: NDArray[np.int64], n_levels: int, aggregations: Iterable[str]
) -> dict[str, float]:
    """GLSZM features for each requested dimension (3D, 2D, 2_5D), keyed by IBSI tag."""
    out: dict[str, float] = {}
    for dim in dims(aggregations):
        planar = dim != "3D"
        z = zones(grey, planar)
        m, n = zone_matrices(z, z.size, n_levels, grey, planar)
        out.update(zone_aggregate(m, n, dim, _features))
    return out
