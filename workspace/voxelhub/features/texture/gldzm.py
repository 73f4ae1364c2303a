"""Grey level distance zone matrix (IBSI 3.9): zones by their distance to the ROI edge."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from voxelhub.features.texture._common import Array, dims, size_matrix_features, zone_aggregate
from voxelhub.features.texture.glszm import zone_matrices, zones

__all__ = ["distance_map", "features"]

_NAMES = {
    "s": "sd",
    "l": "ld",
    "lge": "lgze",
    "hge": "hgze",
    "nu": "zdnu",
    "perc": "z_perc",
    "var": "zd",
}


def distance_map(mask: NDArray[np.bool_], planar: bool) -> NDArray[np.int64]:
    """Taxicab distance of each ROI voxel to the nearest voxel outside (edge voxels: 1).

    IBSI uses 6-connectedness in 3D and 4-connectedness in-plane for 2D.
    """
    if planar:
        metric = np.zeros((3, 3, 3), dtype=bool)
        metric[1] = ndimage.generate_binary_structure(2, 1)
        padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
        inner = (slice(None), slice(1, -1), slice(1, -1))
    else:
        metric = ndimage.generate_binary_structure(3, 1)
        padded = np.pad(mask, 1)
        inner = (slice(1, -1),) * 3
    dist = ndimage.distance_transform_cdt(padded, metric=metric)
    return np.asarray(dist[inner], dtype=np.int64)


def _features(m: Array, n_voxels: Array) -> dict[str, Array]:
    return size_matrix_features(m, n_voxels, "dzm", _NAMES)


def features(
    grey: NDArray[np.int64],
    n_levels: int,
    aggregations: Iterable[str],
    edge_mask: NDArray[np.bool_] | None = None,
) -> dict[str, float]:
    """GLDZM features per dimension; ``edge_mask`` defines the ROI edge (default the ROI)."""
    out: dict[str, float] = {}
    edge = grey > 0 if edge_mask is None else edge_mask
    for dim in dims(aggregations):
        planar = dim != "3D"
        z = zones(grey, planar)
        dist = distance_map(edge, planar).ravel()
        order = np.argsort(z.labels.ravel(), kind="stable")
        lab_sorted = z.labels.ravel()[order]
        starts = np.searchsorted(lab_sorted, np.arange(1, z.level.size + 1))
        zone_dist = np.minimum.reduceat(dist[order], starts) if starts.size else starts
        m, n = zone_matrices(z, zone_dist.astype(np.int64), n_levels, grey, planar)
        out.update(zone_aggregate(m, n, dim, _features))
    return out
