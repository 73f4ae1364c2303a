"""The pyramid levels of a volume, opened lazily through the catalog, and choosing among them.

A volume from :func:`voxelhub.open_series` knows its ``volume_uid`` and level; its coarser
levels, their factors and its label images' levels are what the store says
(:class:`~voxelhub.store.stored.StoredVolume`), never worked out here.  A volume that did not
come from a store (an in-memory array, ``from_simpleitk``) has only itself.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from voxelhub.errors import VoxelHubError

if TYPE_CHECKING:
    from voxelhub.store.stored import Level, StoredVolume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PyramidLevel:
    """One level: the lazy array and its downsampling factor (z, y, x) from the viewed volume."""

    data: xr.DataArray
    factor: tuple[int, int, int]
    stored: Level | None = None
    """The store's level this is (None for an array that did not come from a store)."""
    volume: StoredVolume | None = field(default=None, compare=False, repr=False)
    """The stored volume the level belongs to."""

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
    if isinstance(volume, xr.DataArray) and "c" in volume.dims:
        raise ValueError(
            f"{volume.name}: a colour volume ({', '.join(map(str, volume['c'].values))}); the "
            "viewers draw windowed grey intensities and cannot show colour yet. View one "
            "channel as an array: voxelhub.view(volume.sel(c='R').values, "
            "spacing=volume.attrs['spacing_zyx']), or see its colour thumbnail"
        )
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

    The levels and their factors are the store's (:attr:`StoredVolume.levels`, from the
    volume's metadata, one catalog lookup), opened lazily; ``catalog`` given, or the default
    catalog when ``$VOXELHUB_STORE`` is set.  Without a catalog, or for an array that is not a
    whole stored level, only ``volume``.
    """
    uid = volume.attrs.get("volume_uid")
    if not uid or catalog is None:
        return [PyramidLevel(volume, (1, 1, 1))]
    try:
        stored = catalog.stored_volume(str(uid))
    except VoxelHubError as err:
        log.debug("volume %s: no stored pyramid (%s)", uid, err)
        return [PyramidLevel(volume, (1, 1, 1))]
    here = int(volume.attrs.get("level", 0))
    if not 0 <= here < len(stored.levels) or stored.levels[here].shape[-3:] != tuple(
        int(s) for s in volume.shape
    ):
        return [PyramidLevel(volume, (1, 1, 1))]  # a part of a level, or another version
    base = stored.levels[here].factor
    timepoint = int(volume.attrs.get("timepoint", 0))
    out = [PyramidLevel(volume, (1, 1, 1), stored.levels[here], stored)]
    for index in range(here + 1, len(stored.levels)):
        level = stored.levels[index]
        fz, fy, fx = (max(1, a // b) for a, b in zip(level.factor, base, strict=True))
        data = first_timepoint(stored.open(index), timepoint)
        out.append(PyramidLevel(data, (fz, fy, fx), level, stored))
    log.debug("volume %s: %d pyramid levels", uid, len(out))
    return out


def mask_levels(mask: Any, levels: list[PyramidLevel]) -> list[Any]:
    """The mask's array at each of ``levels``: the mask as given at the first, and at a coarser
    level the label image's own stored level when ``mask`` is a label image of the viewed
    volume (:func:`voxelhub.roi.read_labels`) that stores it; None where it does not (sample
    the first with :func:`label_level`)."""
    raw = mask.data if isinstance(mask, xr.DataArray) else mask
    out: list[Any] = [raw] + [None] * (len(levels) - 1)
    stored = levels[0].volume
    name = str(mask.name) if isinstance(mask, xr.DataArray) and mask.name else ""
    if (
        stored is None
        or name not in stored.labels
        or mask.attrs.get("volume_uid") != stored.volume_uid
    ):
        return out
    try:
        paths = [lv.path for lv in stored.label_levels(name)]
    except (VoxelHubError, KeyError, ValueError) as err:
        log.debug("label image %s: no stored levels (%s)", name, err)
        return out
    for k, level in enumerate(levels[1:], start=1):
        if level.stored is not None and level.stored.path in paths:
            out[k] = stored.open_labels(name, paths.index(level.stored.path))
    return out


def label_level(masks: list[Any], levels: list[PyramidLevel], k: int) -> Any:
    """The mask at level ``k`` (lazy): its stored level, or the first sampled by the store's
    rule for labels (:func:`voxelhub.store.ngff.sample_labels`)."""
    from voxelhub.store.ngff import sample_labels

    if masks[k] is not None:
        return masks[k]
    return sample_labels(masks[0], levels[k].factor, levels[k].shape)


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
