"""The pyramid levels of a volume, opened lazily through the catalog, and choosing among them.

A volume from :func:`voxelhub.open_series` knows its ``volume_uid`` and level; the coarser
levels are opened through the same public call.  A volume that did not come from a store (an
in-memory array, ``from_simpleitk``) has only itself.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from voxelhub.errors import VoxelHubError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PyramidLevel:
    """One level: the lazy array and its downsampling factor (z, y, x) from the viewed volume."""

    data: xr.DataArray
    factor: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = (int(s) for s in self.data.shape)
        return z, y, x


def as_volume(volume: Any, spacing: tuple[float, float, float] | None = None) -> xr.DataArray:
    """A DataArray with dims z, y, x and ``spacing_zyx`` / ``affine_lps`` attrs.

    DataArrays from :func:`voxelhub.open_series` pass through unchanged; numpy or dask arrays
    get unit (or the given) spacing and an identity direction.  A 4-D volume (dims ``t, z, y,
    x``) shows its first time point (``attrs["timepoint"]``); pass ``volume.isel(t=k)`` for
    another.
    """
    if isinstance(volume, xr.DataArray) and "t" in volume.dims:
        volume = first_timepoint(volume)
    if isinstance(volume, xr.DataArray):
        if volume.ndim != 3:
            raise ValueError(f"expected a 3-D volume (z, y, x), got dims {volume.dims}")
        if "spacing_zyx" in volume.attrs and "affine_lps" in volume.attrs:
            return volume
        data = volume.data
        attrs = dict(volume.attrs)
    else:
        data = volume
        attrs = {}
        if getattr(data, "ndim", None) != 3:
            raise ValueError(f"expected a 3-D array (z, y, x), got shape {np.shape(data)}")
    dz, dy, dx = spacing or (1.0, 1.0, 1.0)
    affine = np.diag([dx, dy, dz, 1.0])
    attrs.setdefault("modality", "")
    attrs.update(
        spacing_zyx=[float(dz), float(dy), float(dx)],
        affine_lps=affine.tolist(),
        direction_lps=np.eye(3).tolist(),
        origin_lps=[0.0, 0.0, 0.0],
    )
    attrs.setdefault("flags", [])
    attrs.setdefault("flag_reasons", [])
    attrs.setdefault("window_presets", {})
    nz, ny, nx = (int(s) for s in data.shape)
    return xr.DataArray(
        data,
        dims=("z", "y", "x"),
        coords={"z": np.arange(nz) * dz, "y": np.arange(ny) * dy, "x": np.arange(nx) * dx},
        attrs=attrs,
        name=getattr(volume, "name", None) or "volume",
    )


def first_timepoint(volume: xr.DataArray, t: int = 0) -> xr.DataArray:
    """Time point ``t`` of a 4-D volume, remembering which (3-D volumes pass through)."""
    if "t" not in volume.dims:
        return volume
    out = volume.isel(t=t)
    out.attrs = {**volume.attrs, "timepoint": t, "timepoints": int(volume.sizes["t"])}
    return out


def resolve(
    volume: Any, catalog: Any, spacing: tuple[float, float, float] | None
) -> tuple[xr.DataArray, Any]:
    """What a widget was given (a catalog row, a UID, a DataArray or an array) as a volume.

    Returns the volume and the catalog to find its pyramid in (``$VOXELHUB_STORE``'s when none
    was given and the variable is set).
    """
    if catalog is None and os.environ.get("VOXELHUB_STORE"):
        from voxelhub import open_catalog

        catalog = open_catalog()
    if isinstance(volume, str) or (
        hasattr(volume, "to_dict") and not isinstance(volume, xr.DataArray)
    ):
        from voxelhub import open_series

        volume = open_series(volume, catalog=catalog)
    return as_volume(volume, spacing), catalog


def levels_of(volume: xr.DataArray, catalog: Any = None) -> list[PyramidLevel]:
    """``volume`` itself first, then every coarser stored level of the same volume.

    Coarser levels are opened with :func:`voxelhub.open_series` (``catalog`` given, or the
    default catalog when ``$VOXELHUB_STORE`` is set); without a catalog, only ``volume``.
    """
    out = [PyramidLevel(volume, (1, 1, 1))]
    uid = volume.attrs.get("volume_uid")
    if not uid or catalog is None:
        return out
    from voxelhub import open_series

    base = np.asarray(volume.attrs["spacing_zyx"], dtype=float)
    level = int(volume.attrs.get("level", 0)) + 1
    while level < 16:
        try:
            coarser = first_timepoint(
                open_series(uid, level=level, catalog=catalog),
                int(volume.attrs.get("timepoint", 0)),
            )
        except VoxelHubError:
            break
        ratio = np.asarray(coarser.attrs["spacing_zyx"], dtype=float) / base
        factor = tuple(max(1, round(float(r))) for r in ratio)
        out.append(PyramidLevel(coarser, (factor[0], factor[1], factor[2])))
        level += 1
    log.debug("volume %s: %d pyramid levels", uid, len(out))
    return out


def finest_fitting(levels: list[PyramidLevel], max_side: int, axes: tuple[int, ...]) -> int:
    """Index of the finest level whose sides along ``axes`` are all at most ``max_side``."""
    for i, lvl in enumerate(levels):
        if max(lvl.shape[a] for a in axes) <= max_side:
            return i
    return len(levels) - 1


def fitting_voxels(levels: list[PyramidLevel], max_voxels: int) -> int:
    """Index of the finest level with at most ``max_voxels`` voxels (the coarsest if none)."""
    for i, lvl in enumerate(levels):
        if int(np.prod(lvl.shape)) <= max_voxels:
            return i
    return len(levels) - 1
