"""Putting label images from another grid onto a volume's grid: compare, then nearest neighbour.

A grid is a shape ``(z, y, x)`` and an affine that maps an index ``(x, y, z, 1)`` to LPS
millimetres (the convention of a volume's ``affine_lps``: columns are the row direction times the
column spacing, the column direction times the row spacing, and the slice step).  Any affine
works here, sheared (gantry tilt) and oblique ones included, because resampling maps every
target voxel centre through both affines rather than asking an image library for a grid it
may not be able to represent.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from numpy.typing import NDArray

from voxelhub.errors import GeometryError

__all__ = ["grid_of", "nearest_onto", "same_grid"]

Affine = NDArray[np.float64]


def grid_of(volume: xr.DataArray) -> tuple[tuple[int, int, int], Affine]:
    """Shape and LPS affine of a volume opened with :func:`voxelhub.open_series`."""
    shape = tuple(int(s) for s in volume.shape)
    return shape, np.asarray(volume.attrs["affine_lps"], dtype=float)  # type: ignore[return-value]


def _corners(shape: tuple[int, ...], affine: Affine) -> NDArray[np.float64]:
    nz, ny, nx = shape
    idx = np.array(
        [[x, y, z, 1.0] for z in (0, nz - 1) for y in (0, ny - 1) for x in (0, nx - 1)]
    ).T
    out: NDArray[np.float64] = (affine @ idx)[:3].T
    return out


def same_grid(
    shape_a: tuple[int, ...],
    affine_a: Affine,
    shape_b: tuple[int, ...],
    affine_b: Affine,
    tolerance: float = 0.01,
) -> bool:
    """Whether two grids coincide: same shape, corner voxels within ``tolerance`` × the spacing."""
    if tuple(shape_a) != tuple(shape_b):
        return False
    spacing = float(np.min(np.linalg.norm(affine_a[:3, :3], axis=0)))
    gap = np.abs(_corners(shape_a, affine_a) - _corners(shape_b, affine_b)).max()
    return bool(gap <= tolerance * spacing)


def _sample(
    block: NDArray[Any],
    source: NDArray[Any],
    to_source: Affine,
    block_info: dict[Any, Any] | None = None,
) -> NDArray[Any]:
    assert block_info is not None
    (z0, z1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    z, y, x = np.meshgrid(
        np.arange(z0, z1), np.arange(y0, y1), np.arange(x0, x1), indexing="ij", sparse=True
    )
    sx = to_source[0, 0] * x + to_source[0, 1] * y + to_source[0, 2] * z + to_source[0, 3]
    sy = to_source[1, 0] * x + to_source[1, 1] * y + to_source[1, 2] * z + to_source[1, 3]
    sz = to_source[2, 0] * x + to_source[2, 1] * y + to_source[2, 2] * z + to_source[2, 3]
    ix, iy, iz = (np.rint(v).astype(np.int64) for v in (sx, sy, sz))
    nz, ny, nx = source.shape
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (iz >= 0) & (iz < nz)
    out = np.zeros(block.shape, dtype=source.dtype)
    ixb, iyb, izb = (np.broadcast_to(v, block.shape) for v in (ix, iy, iz))
    out[inside] = source[izb[inside], iyb[inside], ixb[inside]]
    return out


def nearest_onto(
    source: NDArray[Any],
    source_affine: Affine,
    shape: tuple[int, int, int],
    affine: Affine,
    chunks: Any = "auto",
) -> da.Array:
    """Resample ``source`` (z, y, x) onto a grid with nearest neighbour, lazily, chunk by chunk.

    Target voxels whose centre falls outside the source are 0 (background).
    """
    source = np.asarray(source)
    if source.ndim != 3:
        raise GeometryError(f"expected a 3-D label image, got shape {source.shape}")
    to_source = np.linalg.inv(np.asarray(source_affine, dtype=float)) @ np.asarray(affine, float)
    template = da.zeros(shape, dtype=source.dtype, chunks=chunks)
    return da.map_blocks(
        _sample,
        template,
        source,
        to_source,
        dtype=source.dtype,
        meta=np.empty((0, 0, 0), dtype=source.dtype),
    )
