"""Label images in the store, next to their volume, as OME-Zarr (NGFF 0.5) labels.

A label image lives at ``<volume>.ome.zarr/labels/<name>/``: a multiscale group with exactly the
volume's pyramid (the same levels, each with the image level's path, shape, scale and chunking,
as NGFF 0.5 requires), with ``image-label`` metadata giving a colour and a name per label value.
Coarser levels take the most frequent label of each block (:func:`downsample_labels`), so
viewers show labels at every level.  The ``labels`` group's ``ome.labels`` attribute lists the
label images; a name appears there only once its group is complete.

Writes are atomic like volume writes: the label image is built under the store's temporary area
(:meth:`~voxelhub.store.location.Location.new_temporary`), re-read and checksummed, and only
then moved into the volume's tree.  A crash leaves a temporary tree that readers never see.

Paths come from the catalog row and every byte goes through :class:`Location`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from voxelhub.catalog import Catalog
from voxelhub.errors import GeometryError, StoreError
from voxelhub.service_catalog import ServiceCatalog
from voxelhub.store import ngff
from voxelhub.store.location import Location
from voxelhub.store.stored import StoredVolume, read_attributes
from voxelhub.store.writer import content_checksum

log = logging.getLogger(__name__)

__all__ = ["LabelImage", "list_labels", "read_labels", "write_labels"]

FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)
"""Default label colours (by label value, cycling): distinct on a grey CT."""


@dataclass(frozen=True)
class LabelImage:
    """What was committed: its path in the store, name per value, dtype and checksum."""

    name: str
    rel_path: str
    names: dict[int, str]
    dtype: str
    checksum: str


def volume_path(catalog: Catalog | ServiceCatalog, row_or_uid: Any) -> str:
    """The store path of a volume given by UID, catalog row or :class:`StoredVolume`."""
    return catalog.stored_volume(row_or_uid).store_path


def list_labels(catalog: Catalog | ServiceCatalog, row_or_uid: Any) -> list[str]:
    """Names of the label images stored with a volume (complete ones only)."""
    return list(catalog.stored_volume(row_or_uid).labels)


def _as_dask(labels: Any) -> da.Array:
    if isinstance(labels, xr.DataArray):
        labels = labels.data
    if isinstance(labels, da.Array):
        return labels
    return da.from_array(np.asarray(labels), chunks=-1)


def _refuse_4d(volume: StoredVolume, name: str) -> None:
    """Label images are stored on 3-D volumes only, for now: say so before anything is written.

    A 4-D volume (fMRI, diffusion) would need a spatial label image beside a ``(t, z, y, x)``
    image, which the readers and OME-Zarr's label rules here do not cover yet."""
    if volume.timepoints and len(volume.timepoints) > 1:
        raise GeometryError(
            f"label image {name!r}: volume {volume.volume_uid} is 4-D "
            f"({len(volume.timepoints)} time points); label images are stored on 3-D volumes "
            "only. Export the volume (voxelhub.store.export) and use the mask with it, or "
            "segment a 3-D series of the same study (same frame of reference)"
        )


def _check_geometry(labels: Any, volume: StoredVolume, name: str) -> None:
    """Refuse a label image whose shape (or, when it carries one, affine) is not the volume's."""
    shape = tuple(int(s) for s in np.shape(labels))
    if shape != tuple(volume.shape):
        raise GeometryError(
            f"label image {name!r} has shape {shape} but volume {volume.volume_uid} has "
            f"shape {tuple(volume.shape)}: resample it onto the volume's grid first "
            "(voxelhub.roi.imports does that for NIfTI/NRRD masks)"
        )
    if isinstance(labels, xr.DataArray) and "affine_lps" in labels.attrs:
        theirs = np.asarray(labels.attrs["affine_lps"], dtype=float)
        ours = np.asarray(volume.geometry.affine_lps, dtype=float)
        if not np.allclose(theirs, ours, atol=1e-3):
            raise GeometryError(
                f"label image {name!r} has the volume's shape {shape} but another affine "
                f"({theirs[:3].round(3).tolist()} vs {ours[:3].round(3).tolist()}): "
                "resample it onto the volume's grid first"
            )


def _label_dtype(data: da.Array) -> np.dtype:
    """Smallest unsigned integer dtype that holds every value (refuses negatives, fractions)."""
    if data.dtype == bool:
        return np.dtype(np.uint8)
    if data.dtype.kind not in "iuf":
        raise ValueError(f"label values must be integers, got dtype {data.dtype}")
    lo, hi = (float(v) for v in da.compute(data.min(), data.max()))
    if lo < 0:
        raise ValueError(f"label values must be >= 0, found {lo:g}")
    if data.dtype.kind == "f" and not bool(da.all(data == da.floor(data)).compute()):
        raise ValueError("label values must be whole numbers; found fractions")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if hi <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def _colors(values: list[int], colors: Mapping[int, Any] | None) -> list[dict[str, Any]]:
    out = []
    for v in values:
        rgba = (colors or {}).get(v)
        if rgba is None:
            rgba = (*PALETTE[(v - 1) % len(PALETTE)], 255)
        rgba = [int(c) for c in rgba] + ([255] if len(rgba) == 3 else [])
        out.append({"label-value": v, "rgba": rgba})
    return out


def _names(
    values: list[int], names: Mapping[int, str] | None, name: str, is_mask: bool
) -> dict[int, str]:
    if names is None:
        if is_mask:
            return dict.fromkeys(values, name)
        return {v: f"{name}-{v}" for v in values}
    missing = [v for v in values if v not in names]
    if missing:
        raise ValueError(
            f"label image {name!r}: no name for label value(s) {missing[:20]}; "
            "pass names={value: name, …} for every value present"
        )
    return {v: str(names[v]) for v in values}


def write_labels(
    catalog: Catalog | ServiceCatalog,
    row_or_uid: Any,
    name: str,
    labels: Any,
    *,
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> LabelImage:
    """Store a label image (or a mask) with its volume, atomically.

    Parameters
    ----------
    catalog
        The catalog the volume is listed in.  With the hub's catalog (a
        :class:`~voxelhub.service_catalog.ServiceCatalog`) the label image is checked here and
        sent to the data service, which stores it the same way if you are an analyst or
        curator of the volume's project.
    row_or_uid
        The volume: its UID, a row of ``Catalog.series()`` or a
        :class:`~voxelhub.store.stored.StoredVolume`.
    name
        The label image's name (letters, digits, ``_ . -``), unique per volume.
    labels
        Integer or boolean array (numpy, dask or xarray) on the volume's level-0 grid.  A dask
        array is written one shard-deep slab at a time, never loaded whole.
    names
        Name of each label value present (0 is background).  Default: ``name`` for a boolean
        mask, ``"<name>-<value>"`` otherwise.
    colors
        RGB or RGBA (0-255) per label value; default a fixed palette.
    source
        Where the labels came from (importer, file, notes); stored in the attributes.
    overwrite
        Replace an existing label image of that name.

    Raises
    ------
    GeometryError
        The label image's shape (or affine) is not the volume's.
    StoreError
        A label image of that name exists and ``overwrite`` is false.
    AccessDenied
        Through the data service: you are not an analyst or curator of the volume's project.
    """
    if not _NAME.match(name):
        raise ValueError(f"invalid label name {name!r}: use letters, digits, '_', '.', '-'")
    stored = catalog.stored_volume(row_or_uid)
    _refuse_4d(stored, name)
    _check_geometry(labels, stored, name)
    data = _as_dask(labels)
    is_mask = data.dtype == bool
    dtype = _label_dtype(data)
    if isinstance(catalog, ServiceCatalog):
        return _send(catalog, stored, name, data, dtype, names, colors, source, overwrite)
    location = catalog.location
    vol_rel = stored.store_path
    final = stored.labels_path(name)
    if location.exists(final) and not overwrite:
        raise StoreError(
            f"label image {name!r} already exists for {location.url_of(vol_rel)}; "
            "pass overwrite=True to replace it"
        )
    vol_group = location.open_group(vol_rel)
    scale = ngff.read_levels(vol_group)[0]["coordinateTransformations"][0]["scale"]
    shape = tuple(int(s) for s in stored.shape)
    levels = _image_levels(vol_group, shape)
    tmp = location.new_temporary(suffix="")
    try:
        group = zarr.open_group(location.zarr_store(tmp), mode="w-", zarr_format=3)
        codec = _encryption_of(vol_group, stored.project)
        arrays = [
            ngff.create_level_array(group, level, dtype, encryption=codec) for level in levels
        ]
        array = arrays[0]
        slab = int((array.shards or array.chunks)[0])
        present: set[int] = set()
        for z0 in range(0, shape[0], slab):
            block = np.asarray(data[z0 : z0 + slab].compute()).astype(dtype)
            array[z0 : z0 + block.shape[0]] = block
            present.update(int(v) for v in np.unique(block))
            for level, coarse in zip(levels[1:], arrays[1:], strict=True):
                small = downsample_labels(block, level.factor)
                start = z0 // level.factor[0]
                stop = min(level.shape[0], start + small.shape[0])
                coarse[start:stop] = small[: stop - start]
        values = sorted(present - {0})
        label_names = _names(values, names, name, is_mask)
        # an encrypted volume's label metadata names nothing in the clear (multiscale name too)
        ngff.write_metadata(group, levels, tuple(scale), name if codec is None else "labels")
        properties: list[Any] = [{"label-value": v, "name": label_names[v]} for v in values]
        ome = dict(group.attrs["ome"])  # type: ignore[arg-type]
        ome["image-label"] = {
            "colors": _colors(values, colors),
            "properties": properties if codec is None else [{"label-value": v} for v in values],
            "source": {"image": "../../"},
        }
        checksum = content_checksum(array)  # re-reads what was written: verifies it too
        group.attrs["ome"] = ome
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "kind": "labels",
            "volume_uid": stored.volume_uid,
            "volume_checksum": stored.checksum,
            "names": {str(v): n for v, n in label_names.items()},
            "dtype": dtype.str,
            "checksum": checksum,
            "source": dict(source or {}),
        }
        if codec is not None:
            meta = _sealed_label_meta(group, {**meta, "label_properties": properties}, codec)
        group.attrs["voxelhub"] = meta
        _commit(location, tmp, final, overwrite)
    except BaseException:
        location.remove(tmp)
        raise
    _list_name(location, stored.labels_path(), name)
    log.info("stored label image %s (%d values) at %s", name, len(values), location.url_of(final))
    return LabelImage(name, final, label_names, dtype.str, checksum)


def _send(
    catalog: ServiceCatalog,
    stored: StoredVolume,
    name: str,
    data: da.Array,
    dtype: np.dtype,
    names: Mapping[int, str] | None,
    colors: Mapping[int, Any] | None,
    source: Mapping[str, Any] | None,
    overwrite: bool,
) -> LabelImage:
    """Send a checked label image to the data service, which writes it with :func:`write_labels`.

    What the service would refuse for the data itself (missing names, an existing image) is
    refused here first with the error the local path raises; the service checks again.
    """
    if name in stored.labels and not overwrite:
        raise StoreError(
            f"label image {name!r} already exists for {stored.volume_uid}; "
            "pass overwrite=True to replace it"
        )
    array = np.asarray(data.compute())
    if array.dtype != bool:
        array = array.astype(dtype)
    _names(sorted(int(v) for v in np.unique(array) if v), names, name, array.dtype == bool)
    written = catalog.put_labels(
        stored.volume_uid,
        name,
        array,
        dict(names) if names is not None else None,
        overwrite,
        colors=colors,
        source=source,
    )
    return LabelImage(
        str(written["name"]),
        str(written["rel_path"]),
        {int(k): str(v) for k, v in written["names"].items()},
        str(written["dtype"]),
        str(written["checksum"]),
    )


LABEL_CLEAR_KEYS = frozenset({"format_version", "kind", "volume_uid", "dtype", "checksum"})
"""``voxelhub`` attributes a label image of an encrypted volume keeps in ``zarr.json``; its
value names, source and volume checksum go into the group's sealed object."""


def _sealed_label_meta(group: zarr.Group, meta: dict[str, Any], codec: Any) -> dict[str, Any]:
    """Write the label group's sealed object; return the clear attributes with the marker."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    from voxelhub.store import sidecar

    clear, sealed = sidecar.split(meta, codec.key_id, clear_keys=LABEL_CLEAR_KEYS)
    buffer = default_buffer_prototype().buffer.from_bytes(sealed)
    sync(group.store.set(f"{group.path}/{sidecar.SIDECAR_KEY}".lstrip("/"), buffer))
    return clear


def _encryption_of(vol_group: Any, project: str) -> Any:
    """The codec for label images of an encrypted volume (its project's current data key);
    None for a clear one.  Without keys this raises: labels are never written in the clear
    beside an encrypted volume."""
    from voxelhub.store import sidecar

    meta: dict[str, Any] = dict(vol_group.attrs.get("voxelhub") or {})
    if sidecar.MARKER not in meta:
        return None
    from voxelhub.store.encryption import codec_for

    return codec_for(project)


def _image_levels(vol_group: Any, shape: tuple[int, ...]) -> list[ngff.Level]:
    """The image's pyramid levels (path, shape, factor): a label image stores the same ones.

    NGFF 0.5 requires a label image to have as many levels as its image; each level here has
    the image level's path, shape and factor, so a viewer shows labels at every level.
    """
    meta: dict[str, Any] = dict(vol_group.attrs.get("voxelhub") or {})
    paths = [str(d["path"]) for d in ngff.read_levels(vol_group)]
    levels = [ngff.Level("0", shape, (1, 1, 1))]  # type: ignore[arg-type]
    for entry in meta.get("levels", [])[1:]:
        factor = tuple(int(f) for f in entry["factor"])
        level_shape = tuple(int(n) for n in entry["shape"])[-3:]
        if str(entry["path"]) not in paths or any(f & (f - 1) for f in factor):
            break
        levels.append(ngff.Level(str(entry["path"]), level_shape, factor))  # type: ignore[arg-type]
    return levels


def downsample_labels(block: np.ndarray, factor: tuple[int, int, int]) -> np.ndarray:
    """Labels on a coarser grid: the most frequent value of each block of ``factor`` voxels.

    Ties go to a label over background, then to the smaller label value, so a structure that
    fills half a block survives.  The last, partial block of each axis counts only the voxels
    the volume has.  Label images with more than 32 values in a slab take
    the value at the block centre instead (the rule of :func:`voxelhub.store.ngff.label_indices`):
    counting each of many labels would cost too much.
    """
    if factor == (1, 1, 1):
        return block
    shape = block.shape
    out_shape = tuple(-(-n // f) for n, f in zip(shape, factor, strict=True))
    values = np.unique(block)
    if len(values) > 32:
        return np.asarray(ngff.sample_labels(block, factor, out_shape))
    split = (out_shape[0], factor[0], out_shape[1], factor[1], out_shape[2], factor[2])
    pad = [(0, o * f - n) for o, f, n in zip(out_shape, factor, shape, strict=True)]
    blocks = np.pad(block, pad).reshape(split)
    real = (
        np.pad(np.ones(shape, dtype=bool), pad).reshape(split) if any(p for _, p in pad) else None
    )
    best = np.zeros(out_shape, dtype=block.dtype)
    best_key = np.full(out_shape, -1, dtype=np.int64)
    for value in values:  # ascending: on equal keys the smaller label stays
        hit = blocks == value
        if real is not None:
            hit &= real
        count = hit.sum(axis=(1, 3, 5), dtype=np.int64)
        key = count * 2 + int(value != 0)
        better = key > best_key
        best[better] = value
        best_key[better] = key[better]
    return best


def _commit(location: Location, tmp: str, final: str, overwrite: bool) -> None:
    """Move the finished label image into place; an old one is moved aside first, then removed."""
    if not (overwrite and location.exists(final)):
        location.commit(tmp, final)
        return
    old = location.new_temporary(suffix=".old")
    location.commit(final, old)
    try:
        location.commit(tmp, final)
    except BaseException:
        location.commit(old, final)
        raise
    location.remove(old)


def _list_name(location: Location, labels_rel: str, name: str) -> None:
    """Add ``name`` to the ``labels`` group's list (after its group is complete)."""
    group = zarr.open_group(location.zarr_store(labels_rel), mode="a", zarr_format=3)
    ome: dict[str, Any] = dict(group.attrs.get("ome") or {})  # type: ignore[arg-type]
    listed = [str(n) for n in ome.get("labels", [])]
    if name not in listed:
        listed.append(name)
    group.attrs["ome"] = {"version": ngff.NGFF_VERSION, "labels": listed}


def read_labels(
    catalog: Catalog | ServiceCatalog, row_or_uid: Any, name: str, level: int = 0
) -> xr.DataArray:
    """A stored label image as a lazy DataArray on its volume's coordinates.

    ``level`` picks a pyramid level (the volume's at that level: coordinates, affine, spacing);
    label images written before label pyramids store level 0 only.

    ``attrs`` carry the volume's geometry (``affine_lps``, ``spacing_zyx`` …) and
    ``label_names`` / ``label_colors`` per value, so the result goes straight into
    :func:`voxelhub.features.extract`.
    """
    return read_stored_labels(catalog.stored_volume(row_or_uid), name, level)


def read_stored_labels(stored: StoredVolume, name: str, level: int = 0) -> xr.DataArray:
    """:func:`read_labels` of a :class:`~voxelhub.store.stored.StoredVolume` (what a Dask worker
    holds: it needs no catalog)."""
    if name not in stored.labels:
        raise StoreError(
            f"no label image {name!r} for {stored.location.url_of(stored.store_path)}; "
            f"stored: {', '.join(stored.labels) or 'none'}"
        )
    volume = stored.open(level)
    group = stored.location.open_group(stored.labels_path(name))
    paths = [str(d["path"]) for d in ngff.read_levels(group)]
    if not 0 <= level < len(paths):
        raise StoreError(
            f"label image {name!r} stores levels 0..{len(paths) - 1}, not {level}"
            + ("; it was written before label pyramids: write it again" if len(paths) == 1 else "")
        )
    array = group[paths[level]]
    assert isinstance(array, zarr.Array)
    if tuple(array.shape) != tuple(volume.shape):
        raise StoreError(
            f"label image {name!r} level {level} has shape {tuple(array.shape)}, the volume's "
            f"{tuple(volume.shape)}: write it again"
        )
    shards = array.shards or array.chunks
    data = da.from_zarr(array, chunks=(int(shards[0]), *(int(s) for s in array.shape[1:])))
    ome: dict[str, Any] = dict(group.attrs["ome"])  # type: ignore[arg-type]
    meta: dict[str, Any] = dict(group.attrs.get("voxelhub") or {})  # type: ignore[arg-type]
    meta = read_attributes(stored.location, stored.labels_path(name), meta)  # encrypted: sealed
    image_label = dict(ome.get("image-label", {}))
    if "label_properties" in meta:  # sealed value names (encrypted volumes)
        image_label["properties"] = meta["label_properties"]
    keep = ("volume_uid", "series_uid", "level", "affine_lps", "direction_lps", "origin_lps")
    attrs: dict[str, Any] = {k: volume.attrs[k] for k in keep if k in volume.attrs}
    attrs.update(
        spacing_zyx=volume.attrs["spacing_zyx"],
        flags=volume.attrs.get("flags", []),
        label_names={int(p["label-value"]): p["name"] for p in image_label.get("properties", [])},
        label_colors={int(c["label-value"]): c["rgba"] for c in image_label.get("colors", [])},
        source=meta.get("source", {}),
        checksum=meta.get("checksum", ""),
        stale=bool(meta.get("volume_checksum"))
        and meta.get("volume_checksum") != volume.attrs.get("checksum"),
    )
    return xr.DataArray(data, dims=volume.dims, coords=volume.coords, attrs=attrs, name=name)
