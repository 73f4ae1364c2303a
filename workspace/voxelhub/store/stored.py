"""A stored volume as a typed object: what the catalog hands out instead of a row of strings.

:class:`StoredVolume` joins the catalog row (project, patient, study, descriptions) with the
volume's own attributes in the store (levels, geometry, flags, acquisition table, source UIDs,
label images).  It is frozen and picklable: send it to a Dask worker and call :meth:`open`
there; the :class:`~voxelhub.store.location.Location` it carries knows how to reach the bytes
(a folder, object storage, or the data service with the user's token).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from voxelhub.errors import StoreError
from voxelhub.store import sidecar
from voxelhub.store.location import Location

if TYPE_CHECKING:
    import xarray as xr

LABELS_GROUP = "labels"
"""Sub-group of a volume that holds its label images (OME-Zarr ``labels``)."""


class VolumeFlag(StrEnum):
    """Something about a volume a user must know; the reason text says why, per volume."""

    NO_GEOMETRY = "no_geometry"
    NO_PIXEL_SPACING = "no_pixel_spacing"
    NO_SLICE_SPACING = "no_slice_spacing"
    MISSING_SLICES = "missing_slices"
    NON_UNIFORM_SPACING = "non_uniform_spacing"
    GANTRY_TILT = "gantry_tilt"
    MIXED_ORIENTATION = "mixed_orientation"
    MIXED_STUDY_UIDS = "mixed_study_uids"
    VOLUMES_BY_INSTANCE_ORDER = "volumes_by_instance_order"
    GE_PEPOLAR_REVERSED = "ge_pepolar_reversed"
    UIH_MOSAIC = "uih_mosaic"
    UIH_GRADIENT_FRAME = "uih_gradient_frame"
    GE_PRIVATE_IMAGE_TYPE = "ge_private_image_type"
    NEGATIVE_SLICE_SPACING = "negative_slice_spacing"


@dataclass(frozen=True)
class Geometry:
    """Where every voxel is, in LPS millimetres (level 0)."""

    spacing_zyx: tuple[float, float, float]
    origin_lps: tuple[float, float, float]
    direction_lps: tuple[tuple[float, float, float], ...]
    affine_lps: tuple[tuple[float, float, float, float], ...]
    tilt_degrees: float = 0.0
    slice_offsets_mm: tuple[float, ...] | None = None
    """Distances of each slice from the first, when they are not uniform."""

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Geometry:
        offsets = attrs.get("slice_offsets_mm")
        return cls(
            spacing_zyx=_floats3(attrs["spacing_zyx"]),
            origin_lps=_floats3(attrs["origin_lps"]),
            direction_lps=tuple(_floats3(row) for row in attrs["direction_lps"]),
            affine_lps=tuple(
                (float(r[0]), float(r[1]), float(r[2]), float(r[3])) for r in attrs["affine_lps"]
            ),
            tilt_degrees=float(attrs.get("tilt_degrees", 0.0)),
            slice_offsets_mm=tuple(float(v) for v in offsets) if offsets is not None else None,
        )


@dataclass(frozen=True)
class Level:
    """One pyramid level: its array path in the group, shape and downsampling factor (z, y, x)."""

    path: str
    shape: tuple[int, ...]
    factor: tuple[int, int, int]


@dataclass(frozen=True)
class StoredVolume:
    """One committed volume: catalog identity plus what the store says about it."""

    volume_uid: str
    series_uid: str
    study_uid: str
    patient_id: str
    project: str
    modality: str
    description: str
    split: str
    store_path: str
    checksum: str
    dtype: str
    levels: tuple[Level, ...]
    geometry: Geometry
    flags: frozenset[VolumeFlag]
    flag_reasons: Mapping[str, str]
    labels: tuple[str, ...]
    source_instance_uids: tuple[str, ...]
    acquisition: Mapping[str, Any]
    timepoints: tuple[Mapping[str, Any], ...]
    deidentified: bool
    location: Location = field(compare=False, repr=False)
    encrypted: bool = False
    """Chunks and private attributes sealed with the project's data key (read through the data
    service, or with the master key file)."""
    channels: tuple[str, ...] = ()
    """A colour volume's channel labels (``R``, ``G``, ``B``: its ``c`` axis); empty for grey."""

    @property
    def is_colour(self) -> bool:
        return bool(self.channels)

    @property
    def shape(self) -> tuple[int, ...]:
        """Full-resolution spatial shape ``(z, y, x)``; a 4-D volume's ``t`` and a colour volume's
        ``c`` axis are not in it (see :attr:`timepoints` and :attr:`channels`)."""
        return self.levels[0].shape

    @property
    def is_4d(self) -> bool:
        """Several volumes along ``t`` (fMRI, diffusion): the per-volume table is not empty."""
        return bool(self.timepoints)

    def open(self, level: int = 0) -> xr.DataArray:
        """The volume as a lazy ``xarray.DataArray`` (see :func:`voxelhub.open_series`)."""
        from voxelhub.store.volume import open_volume

        if not 0 <= level < len(self.levels):
            raise StoreError(
                f"level {level} out of range: {self.volume_uid} has levels 0..{len(self.levels) - 1}"
            )
        return open_volume(self.location, self.store_path, level=level)

    def labels_path(self, name: str | None = None) -> str:
        """Store path of the volume's label group, or of one label image in it."""
        rel = posixpath.join(self.store_path, LABELS_GROUP)
        return rel if name is None else posixpath.join(rel, name)

    def label_levels(self, name: str) -> tuple[Level, ...]:
        """The pyramid levels stored for label image ``name``, level 0 first.

        A label image's levels are the image's own (same path, shape and factor); the list
        ends at the first image level the label image does not store.  A label image written
        before label pyramids has level 0 only (a coarser view samples it with
        :func:`voxelhub.store.ngff.sample_labels`).
        """
        return self._label_group(name)[1]

    def open_labels(self, name: str, level: int = 0) -> Any:
        """Label image ``name`` at a level it stores (see :meth:`label_levels`), as a lazy dask
        array chunked by the store's shards."""
        import dask.array as da
        import zarr

        group, levels = self._label_group(name)
        if not 0 <= level < len(levels):
            raise StoreError(
                f"label image {name!r} of {self.volume_uid} stores levels 0..{len(levels) - 1}"
                f", not {level}"
            )
        array = group[levels[level].path]
        assert isinstance(array, zarr.Array)
        shards = array.shards or array.chunks
        return da.from_zarr(array, chunks=(int(shards[0]), *(int(n) for n in array.shape[1:])))

    def _label_group(self, name: str) -> tuple[Any, tuple[Level, ...]]:
        import zarr

        from voxelhub.store import ngff

        if name not in self.labels:
            raise StoreError(
                f"no label image {name!r} for {self.volume_uid}; stored: "
                f"{', '.join(self.labels) or 'none'}"
            )
        group = self.location.open_group(self.labels_path(name))
        stored = [str(d["path"]) for d in ngff.read_levels(group)]
        out: list[Level] = []
        for level, path in zip(self.levels, stored, strict=False):
            array = group.get(path)
            if (
                level.path != path
                or not isinstance(array, zarr.Array)
                or tuple(array.shape) != level.shape[-3:]
            ):
                break
            out.append(level)
        return group, tuple(out)

    def level_for(self, max_side: int) -> int:
        """The coarsest level whose in-plane side is still ≥ ``max_side`` (for previews)."""
        best = 0
        for i, lv in enumerate(self.levels):
            if max(lv.shape[-2:]) >= max_side:
                best = i
        return best

    def to_json(self) -> dict[str, Any]:
        """JSON-ready fields (everything but the location), as the data service sends them."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "location"}
        out["flags"] = sorted(str(f) for f in self.flags)
        out["levels"] = [asdict(lv) for lv in self.levels]
        out["geometry"] = asdict(self.geometry)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], location: Location) -> StoredVolume:
        """The inverse of :meth:`to_json`, reading through ``location``."""
        values = dict(data)
        geometry = dict(values.pop("geometry"))
        geometry["spacing_zyx"] = _floats3(geometry["spacing_zyx"])
        geometry["origin_lps"] = _floats3(geometry["origin_lps"])
        geometry["direction_lps"] = tuple(_floats3(r) for r in geometry["direction_lps"])
        geometry["affine_lps"] = tuple(tuple(float(v) for v in r) for r in geometry["affine_lps"])
        if geometry.get("slice_offsets_mm") is not None:
            geometry["slice_offsets_mm"] = tuple(geometry["slice_offsets_mm"])
        known = {f.name for f in fields(cls)}
        return cls(
            **{k: v for k, v in values.items() if k in known and k not in _TYPED},
            geometry=Geometry(**geometry),
            levels=tuple(
                Level(str(lv["path"]), tuple(lv["shape"]), tuple(lv["factor"]))
                for lv in values["levels"]
            ),
            flags=frozenset(VolumeFlag(f) for f in values.get("flags", [])),
            labels=tuple(values.get("labels", [])),
            source_instance_uids=tuple(values.get("source_instance_uids", [])),
            timepoints=tuple(values.get("timepoints", [])),
            channels=tuple(str(c) for c in values.get("channels", [])),
            location=location,
        )

    @classmethod
    def from_store(cls, location: Location, row: Mapping[str, Any]) -> StoredVolume:
        """Read the volume's attributes at ``row["store_path"]`` and join them with the row."""
        rel = str(row["store_path"])
        group = location.open_group(rel)
        meta: dict[str, Any] = dict(group.attrs.get("voxelhub") or {})  # type: ignore[arg-type]
        if not meta:
            raise StoreError(f"{location.url_of(rel)} is not a VoxelHub volume (no attributes)")
        meta = read_attributes(location, rel, meta)
        geometry = dict(meta["geometry"])
        flags = frozenset(VolumeFlag(f["code"]) for f in geometry.get("flags", []))
        labels: tuple[str, ...] = ()
        if LABELS_GROUP in group:
            sub = group[LABELS_GROUP]
            ome: dict[str, Any] = dict(sub.attrs.get("ome") or {})  # type: ignore[arg-type]
            labels = tuple(str(n) for n in ome.get("labels", []))
        return cls(
            volume_uid=str(row.get("volume_uid") or meta.get("volume_uid", "")),
            series_uid=str(row.get("series_uid") or meta.get("series_uid", "")),
            study_uid=str(row.get("study_uid") or meta.get("study_uid", "")),
            patient_id=str(row.get("patient_id") or meta.get("patient_id", "")),
            project=str(row.get("project", "")),
            modality=str(meta.get("modality", row.get("modality", ""))),
            description=str(row.get("description") or meta.get("series_description", "")),
            split=str(row.get("split") or meta.get("split", "")),
            store_path=rel,
            checksum=str(meta.get("checksum", "")),
            dtype=str(meta.get("dtype", "")),
            levels=tuple(
                Level(
                    str(lv["path"]),
                    tuple(int(s) for s in lv["shape"]),
                    (int(lv["factor"][0]), int(lv["factor"][1]), int(lv["factor"][2])),
                )
                for lv in meta["levels"]
            ),
            geometry=Geometry.from_attrs(geometry),
            flags=flags,
            flag_reasons={str(f["code"]): str(f["reason"]) for f in geometry.get("flags", [])},
            labels=labels,
            source_instance_uids=tuple(str(u) for u in meta.get("source_instance_uids", [])),
            acquisition=dict(meta.get("acquisition") or {}),
            timepoints=tuple(dict(t) for t in meta.get("timepoints") or []),
            deidentified=bool(meta.get("deidentified", False)),
            location=location,
            encrypted=sidecar.MARKER in meta,
            channels=tuple(str(c) for c in meta.get("channels") or []),
        )


def read_attributes(location: Location, rel: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """A volume's ``voxelhub`` attributes with its sealed ones merged back (encrypted projects;
    through the data service they come merged already).  A process holding no keys opens the
    store's key ring with ``$VOXELHUB_KEY_FILE`` when it is set (the single-user shape)."""
    if not sidecar.is_sealed(meta):
        return dict(meta)
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    from voxelhub import config
    from voxelhub.store.encryption import keys_in_use, open_store_keys

    if keys_in_use() is None and config.key_file() is not None:
        open_store_keys(location)  # a laptop's own store: $VOXELHUB_KEY_FILE opens it

    store = location.zarr_store(rel, read_only=True)

    def read(key: str) -> bytes | None:
        found = sync(store.get(key, prototype=default_buffer_prototype()))
        return None if found is None else found.to_bytes()

    return sidecar.merged(meta, read)


_TYPED = frozenset(
    {
        "geometry",
        "levels",
        "flags",
        "labels",
        "source_instance_uids",
        "timepoints",
        "channels",
        "location",
    }
)


def _floats3(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return (a, b, c)
