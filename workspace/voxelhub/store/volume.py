"""Stored volume → ``xarray.DataArray`` (lazy, dask-backed), and out to SimpleITK / NIfTI.

A colour volume has a channel axis ``c`` (coordinates ``"R", "G", "B"``) before ``z, y, x``.
Coordinates are millimetres in the volume's own frame: ``z`` is the distance of each slice from
the first along the slice normal (the real, possibly non-uniform positions), ``y`` and ``x`` the
in-plane distances from the first row and column.  ``attrs`` carry the LPS affine, direction,
origin, spacing, modality, flags and window presets, so the patient-space position of any voxel
is known without the DICOM files.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from voxelhub.errors import GeometryError, StoreError
from voxelhub.store import ngff
from voxelhub.store.location import Location

WINDOW_PRESETS: dict[str, dict[str, tuple[float, float]]] = {
    "CT": {
        "lung": (-600.0, 1500.0),
        "mediastinum": (50.0, 350.0),
        "bone": (400.0, 1800.0),
        "brain": (40.0, 80.0),
        "abdomen": (40.0, 400.0),
    },
}
"""(level/centre, width) pairs per modality; MR windows come from percentiles at view time."""


def open_volume(location: Location, rel_path: str, *, level: int = 0) -> xr.DataArray:
    """Open one pyramid level of a stored volume lazily.

    Parameters
    ----------
    location
        The store.
    rel_path
        The volume's path inside the store (the catalog's ``store_path``).
    level
        Pyramid level: 0 is full resolution, higher levels are halved in-plane (and in z where
        voxels are near-isotropic).
    """
    group = location.open_group(rel_path)
    meta: dict[str, Any] = dict(group.attrs.get("voxelhub") or {})  # type: ignore[arg-type]
    if not meta:
        raise StoreError(f"{location.url_of(rel_path)} is not a VoxelHub volume (no attributes)")
    from voxelhub.store.stored import read_attributes

    meta = read_attributes(location, rel_path, meta)  # an encrypted project's sealed attributes
    levels = ngff.read_levels(group)
    if not 0 <= level < len(levels):
        raise StoreError(f"level {level} out of range: the volume has levels 0..{len(levels) - 1}")
    array = group[levels[level]["path"]]
    assert isinstance(array, zarr.Array)
    data = da.from_zarr(array, chunks=_dask_chunks(array))
    geometry = meta["geometry"]
    factor = meta["levels"][level]["factor"]
    dz, dy, dx = geometry["spacing_zyx"]
    nz, ny, nx = (int(s) for s in array.shape[-3:])
    offsets = geometry.get("slice_offsets_mm")
    if offsets is not None and factor[0] == 1:
        z = np.asarray(offsets, dtype=float)
    else:
        z = (np.arange(nz) * factor[0] + (factor[0] - 1) / 2) * _normal_step(geometry, dz)
    coords = {
        "z": ("z", z, {"units": "mm", "long_name": "distance along the slice normal"}),
        "y": ("y", (np.arange(ny) * factor[1] + (factor[1] - 1) / 2) * dy, {"units": "mm"}),
        "x": ("x", (np.arange(nx) * factor[2] + (factor[2] - 1) / 2) * dx, {"units": "mm"}),
    }
    dims: tuple[str, ...] = ("z", "y", "x")
    channels = meta.get("channels")
    if channels:
        dims = ("c", *dims)
        coords["c"] = ("c", np.asarray(channels, dtype=object), {"long_name": "colour channel"})
    if array.ndim == len(dims) + 1:
        dims = ("t", *dims)
        coords.update(_time_coords(meta.get("timepoints") or [], int(array.shape[0])))
    modality = meta.get("modality", "")
    affine = np.asarray(geometry["affine_lps"], dtype=float)
    affine[:3, :3] = affine[:3, :3] * np.array(factor[::-1])
    affine[:3, 3] = affine[:3, 3] + np.asarray(geometry["affine_lps"])[:3, :3] @ (
        (np.array(factor[::-1]) - 1) / 2
    )
    attrs: dict[str, Any] = {
        "volume_uid": meta.get("volume_uid", ""),
        "series_uid": meta.get("series_uid", ""),
        "modality": modality,
        "units": "HU" if modality == "CT" else "",
        "level": level,
        "affine_lps": affine.tolist(),
        "direction_lps": geometry["direction_lps"],
        "origin_lps": affine[:3, 3].tolist(),
        "spacing_zyx": [float(dz * factor[0]), float(dy * factor[1]), float(dx * factor[2])],
        "flags": [f["code"] for f in geometry["flags"]],
        "flag_reasons": [f["reason"] for f in geometry["flags"]],
        "window_presets": WINDOW_PRESETS.get(modality, {}),
        "checksum": meta.get("checksum", ""),
        "description": meta.get("series_description", ""),
        "store_url": location.url_of(rel_path),
        "acquisition": dict(meta.get("acquisition") or {}),
    }
    if channels:
        attrs["photometric_interpretation"] = meta.get("photometric_interpretation", "RGB")
    tr = attrs["acquisition"].get("RepetitionTime")
    if tr:
        attrs["repetition_time"] = float(tr)
    name = meta.get("name") or rel_path
    return xr.DataArray(data, dims=dims, coords=coords, attrs=attrs, name=name)


def _time_coords(rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """``t`` and its per-volume coordinates from the acquisition table stored with the image."""
    if len(rows) != n:
        return {"t": ("t", np.arange(n), {"long_name": "volume index"})}
    times = [r.get("time_s") for r in rows]
    t = (
        ("t", np.asarray(times, dtype=float), {"units": "s", "long_name": "acquisition time"})
        if None not in times
        else ("t", np.arange(n), {"long_name": "volume index"})
    )
    out: dict[str, Any] = {"t": t, "volume_index": ("t", np.arange(n))}

    def column(key: str) -> list[Any]:
        return [r.get(key) for r in rows]

    if any(v is not None for v in column("b_value")):
        out["b_value"] = (
            "t",
            np.asarray([v if v is not None else np.nan for v in column("b_value")], dtype=float),
            {"units": "s/mm^2"},
        )
    # a DataArray's coordinates may only use its own dims, so each vector is three coordinates:
    # gradient_L/P/S in patient axes, gradient_x/y/z in the volume's index axes
    for key, names in (("gradient_lps", "LPS"), ("gradient_image", "xyz")):
        vectors = column(key)
        if any(v is not None for v in vectors):
            table = np.asarray([v if v is not None else [np.nan] * 3 for v in vectors], dtype=float)
            for axis, letter in enumerate(names):
                out[f"gradient_{letter}"] = ("t", table[:, axis])
    if any(v is not None for v in column("echo_time_s")):
        out["echo_time"] = (
            "t",
            np.asarray(
                [v if v is not None else np.nan for v in column("echo_time_s")], dtype=float
            ),
            {"units": "s"},
        )
    if any(v is not None for v in column("label")):
        out["label"] = ("t", np.asarray([v or "" for v in column("label")], dtype=object))
    if any(column("rows_reversed")):
        out["rows_reversed"] = ("t", np.asarray(column("rows_reversed"), dtype=bool))
    if any(v is not None for v in column("phase_encoding_direction")):
        out["phase_encoding_direction"] = (
            "t",
            np.asarray([v or "" for v in column("phase_encoding_direction")], dtype=object),
        )
    return out


def _normal_step(geometry: dict[str, Any], dz: float) -> float:
    """Slice step measured along the normal (dz is along the stack direction under tilt)."""
    direction = np.asarray(geometry["direction_lps"], dtype=float)
    normal = np.cross(direction[:, 0], direction[:, 1])
    return float(dz * abs(direction[:, 2] @ normal) / np.linalg.norm(normal))


def _dask_chunks(array: zarr.Array) -> tuple[int, ...]:
    """Dask chunks aligned with shards in z and whole slices in-plane: few, large tasks."""
    shards = array.shards or array.chunks
    names = tuple(array.metadata.dimension_names or ())  # type: ignore[union-attr]
    # one time point per chunk; all channels of a colour volume together
    lead = tuple(1 if n == "t" else int(s) for n, s in zip(names, array.shape[:-3], strict=False))
    if len(lead) != array.ndim - 3:
        lead = (1,) * (array.ndim - 3)
    return (*lead, int(shards[-3]), int(array.shape[-2]), int(array.shape[-1]))


def to_simpleitk(volume: xr.DataArray) -> Any:
    """A SimpleITK image with the volume's origin, spacing and direction (loads the data).

    Refuses volumes SimpleITK cannot represent faithfully: a non-orthogonal affine (gantry tilt)
    or non-uniform slice spacing raise :class:`~voxelhub.errors.GeometryError`.
    """
    import SimpleITK as sitk

    if "t" in volume.dims:
        raise GeometryError(
            f"{volume.name}: a 4-D volume ({volume.sizes['t']} time points); select one with "
            "volume.isel(t=k) first"
        )
    flags = set(volume.attrs.get("flags", []))
    blocked = flags & {"gantry_tilt", "non_uniform_spacing", "missing_slices"}
    if blocked:
        raise GeometryError(
            f"{volume.name}: SimpleITK images need an orthogonal, uniform grid, and this volume "
            f"has {', '.join(sorted(blocked))}; resample it explicitly first"
        )
    if "c" in volume.dims:  # colour: a vector image, one RGB pixel per voxel
        image = sitk.GetImageFromArray(
            np.asarray(volume.transpose("z", "y", "x", "c").data), isVector=True
        )
    else:
        image = sitk.GetImageFromArray(np.asarray(volume.data))
    dz, dy, dx = volume.attrs["spacing_zyx"]
    image.SetSpacing((float(dx), float(dy), float(dz)))
    image.SetOrigin(tuple(float(v) for v in volume.attrs["origin_lps"]))
    direction = np.asarray(volume.attrs["direction_lps"], dtype=float)
    image.SetDirection(tuple(float(v) for v in direction.flatten()))
    return image


def from_simpleitk(image: Any, *, modality: str = "", name: str = "image") -> xr.DataArray:
    """An in-memory DataArray (same conventions as :func:`open_volume`) from a SimpleITK image."""
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise GeometryError(f"expected a 3-D image, got {image.GetDimension()}-D")
    array = sitk.GetArrayFromImage(image)
    dx, dy, dz = image.GetSpacing()
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array([dx, dy, dz])
    affine[:3, 3] = origin
    nz, ny, nx = array.shape
    return xr.DataArray(
        array,
        dims=("z", "y", "x"),
        coords={"z": np.arange(nz) * dz, "y": np.arange(ny) * dy, "x": np.arange(nx) * dx},
        attrs={
            "modality": modality,
            "affine_lps": affine.tolist(),
            "direction_lps": direction.tolist(),
            "origin_lps": origin.tolist(),
            "spacing_zyx": [dz, dy, dx],
            "flags": [],
            "flag_reasons": [],
        },
        name=name,
    )


def nifti_affine(volume: xr.DataArray) -> np.ndarray:
    """The NIfTI (RAS) affine of a volume whose array is transposed to (x, y, z)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(volume.attrs["affine_lps"], dtype=float)


RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
"""NIfTI's RGB24 voxel type (datatype 128), as dcm2niix writes colour DICOM."""


def nifti_voxels(volume: xr.DataArray) -> np.ndarray:
    """The voxels in NIfTI's order, (x, y, z[, t]); a colour volume as RGB24 (loads the data).

    Only 8-bit colour has a NIfTI type (dcm2niix writes 16-bit colour as 8-bit); wider colour
    samples are refused rather than truncated.
    """
    spatial = [d for d in ("x", "y", "z", "t") if d in volume.dims]
    if "c" not in volume.dims:
        return np.asarray(volume.transpose(*spatial).data)
    if volume.dtype != np.uint8:
        raise GeometryError(
            f"{volume.name}: NIfTI holds colour as 8-bit RGB24 only, and this volume has "
            f"{volume.dtype} samples; scale them to 8 bits first"
        )
    data = np.ascontiguousarray(np.asarray(volume.transpose(*spatial, "c").data))
    return data.view(RGB24).reshape(data.shape[:-1])


def to_nifti(volume: xr.DataArray, path: str) -> str:
    """Write the volume as NIfTI-1 with its exact affine (sheared under tilt, as dcm2niix does).

    Non-uniform spacing cannot be expressed in NIfTI and raises GeometryError.
    """
    import nibabel as nib

    flags = set(volume.attrs.get("flags", []))
    if flags & {"non_uniform_spacing", "missing_slices"}:
        raise GeometryError(
            f"{volume.name}: NIfTI needs uniform slice spacing and this volume has "
            f"{', '.join(sorted(flags & {'non_uniform_spacing', 'missing_slices'}))}"
        )
    data = nifti_voxels(volume)
    image = nib.Nifti1Image(data, nifti_affine(volume), dtype=data.dtype)
    image.header.set_xyzt_units("mm")
    image.set_sform(image.affine, code=1)
    if "gantry_tilt" in flags:
        image.set_qform(None, code=0)  # a qform cannot hold shear; the sform is exact
    else:
        image.set_qform(image.affine, code=1)
    nib.save(image, path)
    return path


@xr.register_dataarray_accessor("vh")
class VoxelHubAccessor:
    """``volume.vh.to_simpleitk()``, ``volume.vh.to_nifti(path)``, ``volume.vh.affine``."""

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self._obj.attrs["affine_lps"], dtype=float)

    def gradients(self, frame: str = "lps") -> np.ndarray:
        """Diffusion directions of a 4-D volume, ``(t, 3)``: ``"lps"`` or ``"image"`` axes.

        NaN rows where no direction was recorded (b = 0, trace volumes).
        """
        names = {"lps": "LPS", "image": "xyz"}[frame]
        coords = [f"gradient_{letter}" for letter in names]
        if any(c not in self._obj.coords for c in coords):
            raise GeometryError(f"{self._obj.name}: no diffusion directions stored")
        return np.stack([np.asarray(self._obj[c].values, dtype=float) for c in coords], axis=1)

    def to_simpleitk(self) -> Any:
        return to_simpleitk(self._obj)

    def to_nifti(self, path: str) -> str:
        return to_nifti(self._obj, path)
