"""Bring masks made elsewhere onto a stored volume's grid: NIfTI / NRRD, DICOM SEG, RTSTRUCT.

* NIfTI (nibabel, exact sform, shear included) and NRRD (SimpleITK): copied as they are when
  their grid is the volume's; otherwise resampled with nearest neighbour, and the result says so
  (:attr:`ImportedLabels.notes`, and a log message).
* DICOM SEG (highdicom): frames are matched to the volume's slices by the SOP Instance UIDs they
  reference (the volume keeps ``source_instance_uids`` in spatial order).  A SEG that references
  none of them (another de-identification, another copy of the series) is placed by its frame
  positions and resampled like a NIfTI mask.
* RTSTRUCT (pydicom): every closed planar contour is taken from LPS to voxel indices with the
  inverse of the volume's affine (oblique and tilted grids included), put on the slice whose
  position along the normal it lies on, and filled with :func:`skimage.draw.polygon` (voxel
  centres inside).  Contours of one ROI on one slice combine by even-odd (inner contours are
  holes).  Each ROI is its own mask, since ROIs overlap (a body contour holds the organs).

Each importer returns :class:`ImportedLabels` on the volume's coordinates; give ``name=`` to
store the result next to the volume (:func:`voxelhub.roi.labels.write_labels`).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from voxelhub.catalog import Catalog
from voxelhub.errors import DicomError, GeometryError
from voxelhub.roi.grid import grid_of, nearest_onto, same_grid
from voxelhub.roi.labels import LabelImage, volume_path, write_labels
from voxelhub.store.volume import open_volume

log = logging.getLogger(__name__)

__all__ = ["ImportedLabels", "import_mask", "import_rtstruct", "import_seg"]

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_IRREGULAR = {"non_uniform_spacing", "missing_slices"}


@dataclass(frozen=True)
class ImportedLabels:
    """A label image on a volume's grid, with its names and how it got there."""

    labels: xr.DataArray
    names: dict[int, str]
    resampled: bool
    notes: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    stored: LabelImage | None = None


def _finish(
    catalog: Catalog,
    row_or_uid: Any,
    volume: xr.DataArray,
    data: Any,
    names: dict[int, str],
    *,
    resampled: bool,
    notes: list[str],
    source: dict[str, Any],
    name: str | None,
    overwrite: bool,
) -> ImportedLabels:
    for note in notes:
        log.info("%s: %s", source.get("path", "import"), note)
    keep = ("volume_uid", "affine_lps", "direction_lps", "origin_lps", "spacing_zyx", "flags")
    attrs = {k: volume.attrs[k] for k in keep if k in volume.attrs}
    attrs["label_names"] = names
    labels = xr.DataArray(data, dims=volume.dims, coords=volume.coords, attrs=attrs, name=name)
    result = ImportedLabels(labels, names, resampled, notes, {**source, "notes": notes})
    if name is not None:
        stored = write_labels(
            catalog,
            row_or_uid,
            name,
            labels,
            names=names,
            source=result.source,
            overwrite=overwrite,
        )
        result = replace(result, stored=stored)
    return result


def _onto_volume(
    array: NDArray[Any], affine: NDArray[np.float64], volume: xr.DataArray, what: str
) -> tuple[Any, bool, list[str]]:
    """``array`` as it is when its grid is the volume's, else resampled (nearest neighbour)."""
    shape, vol_affine = grid_of(volume)
    if same_grid(array.shape, affine, shape, vol_affine):
        return array, False, [f"{what} is on the volume's grid: copied as it is"]
    irregular = _IRREGULAR & set(volume.attrs.get("flags", []))
    if irregular:
        raise GeometryError(
            f"{what} is on another grid and volume {volume.attrs.get('volume_uid')} has "
            f"{', '.join(sorted(irregular))}: its affine does not describe every slice, so "
            "the mask cannot be resampled onto it exactly"
        )
    spacing = np.linalg.norm(affine[:3, :3], axis=0)[::-1].round(4).tolist()
    note = (
        f"{what} has shape {tuple(array.shape)} and spacing {spacing} (z, y, x) on another grid "
        f"than the volume {shape}: resampled onto the volume's grid with nearest neighbour"
    )
    log.warning(note)
    return nearest_onto(array, affine, shape, vol_affine, chunks=volume.data.chunks), True, [note]


def _integer_labels(array: NDArray[Any], what: str) -> NDArray[Any]:
    if array.dtype == bool or array.dtype.kind in "iu":
        return array
    if not np.all(np.mod(array, 1) == 0):
        raise ValueError(f"{what} holds fractional values (a probability map?): threshold it first")
    return array.astype(np.int64 if array.min() < 0 else np.uint32)


def read_mask_file(path: str | os.PathLike[str]) -> tuple[NDArray[Any], NDArray[np.float64]]:
    """A NIfTI or NRRD mask as a (z, y, x) array and its (x, y, z) index → LPS affine."""
    path = os.fspath(path)
    if path.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        image: Any = nib.load(path)
        data = np.asanyarray(image.dataobj)
        while data.ndim > 3 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise GeometryError(f"{path}: expected a 3-D mask, got shape {data.shape}")
        return data.transpose(2, 1, 0), LPS_FROM_RAS @ np.asarray(image.affine, dtype=float)
    import SimpleITK as sitk

    img = sitk.ReadImage(path)
    if img.GetDimension() != 3:
        raise GeometryError(f"{path}: expected a 3-D mask, got {img.GetDimension()}-D")
    affine = np.eye(4)
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    affine[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=float)
    affine[:3, 3] = img.GetOrigin()
    return sitk.GetArrayFromImage(img), affine


def import_mask(
    catalog: Catalog,
    row_or_uid: Any,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    names: dict[int, str] | None = None,
    overwrite: bool = False,
) -> ImportedLabels:
    """A NIfTI / NRRD mask or label image on a volume's grid (resampled only if it differs).

    Parameters
    ----------
    catalog, row_or_uid
        The volume (UID or catalog row).
    path
        ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr`` (or anything SimpleITK reads).
    name
        Store the result as a label image of this name next to the volume.
    names
        Name per label value (default ``name`` for a 0/1 mask).
    """
    volume = open_volume(catalog.location, volume_path(catalog, row_or_uid))
    array, affine = read_mask_file(path)
    what = os.path.basename(os.fspath(path))
    array = _integer_labels(array, what)
    data, resampled, notes = _onto_volume(array, affine, volume, what)
    values = [int(v) for v in np.unique(array) if v != 0]
    label_names = dict(names) if names else {v: name or f"label-{v}" for v in values}
    if names is None and len(values) > 1:
        label_names = {v: f"{name or 'label'}-{v}" for v in values}
    return _finish(
        catalog,
        row_or_uid,
        volume,
        data,
        label_names,
        resampled=resampled,
        notes=notes,
        source={"importer": "mask", "path": os.fspath(path)},
        name=name,
        overwrite=overwrite,
    )


# -- DICOM SEG --------------------------------------------------------------------------------
def _seg_label_map(seg: Any, getter: Any, **kwargs: Any) -> tuple[Any, list[str]]:
    """Segments combined into one label map; overlaps go to the higher segment number."""
    try:
        return getter(combine_segments=True, **kwargs), []
    except (RuntimeError, ValueError) as exc:
        if "overlap" not in str(exc).lower():
            raise
    result = getter(combine_segments=False, **kwargs)
    one_hot = result.array if hasattr(result, "array") else result
    numbers = np.asarray(seg.get_segment_numbers())
    present = one_hot > 0
    last = present.shape[-1] - 1 - np.argmax(present[..., ::-1], axis=-1)
    label = np.where(present.any(axis=-1), numbers[last], 0)
    note = "segments overlap: overlapping voxels take the higher segment number"
    if hasattr(result, "array"):
        return result.with_array(label.astype(np.uint16)), [note]
    return label.astype(np.uint16), [note]


def import_seg(
    catalog: Catalog,
    row_or_uid: Any,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    overwrite: bool = False,
) -> ImportedLabels:
    """A DICOM SEG as a label image (value = segment number, named by its segment label)."""
    import highdicom as hd

    location = catalog.location
    vol_rel = volume_path(catalog, row_or_uid)
    volume = open_volume(location, vol_rel)
    meta: dict[str, Any] = dict(location.open_group(vol_rel).attrs.get("voxelhub") or {})  # type: ignore[arg-type]
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:
        raise DicomError(f"not a readable DICOM SEG: {exc}", path=os.fspath(path)) from exc
    names = {
        int(item.SegmentNumber): str(getattr(item, "SegmentLabel", f"segment-{item.SegmentNumber}"))
        for item in seg.SegmentSequence
    }
    uids = [str(u) for u in meta.get("source_instance_uids", [])]
    referenced = {str(sop) for _, _, sop in seg.get_source_image_uids()}
    matched = [u for u in uids if u in referenced]
    what = os.path.basename(os.fspath(path))
    source = {"importer": "seg", "path": os.fspath(path), "sop_instance_uid": seg.SOPInstanceUID}
    if matched and len(set(uids)) == len(uids):
        pixels, notes = _seg_label_map(
            seg, seg.get_pixels_by_source_instance, source_sop_instance_uids=matched
        )
        if tuple(pixels.shape[1:]) != tuple(volume.shape[1:]):
            raise GeometryError(
                f"{what}: frames are {tuple(pixels.shape[1:])} but the volume's slices are "
                f"{tuple(volume.shape[1:])}"
            )
        out = np.zeros(volume.shape, dtype=pixels.dtype)
        index = {u: k for k, u in enumerate(uids)}
        for frame, uid in zip(pixels, matched, strict=True):
            out[index[uid]] = frame
        notes = [
            f"matched {len(matched)} of {len(uids)} slices by referenced SOP Instance UID",
            *notes,
        ]
        return _finish(
            catalog,
            row_or_uid,
            volume,
            out,
            names,
            resampled=False,
            notes=notes,
            source=source,
            name=name,
            overwrite=overwrite,
        )
    seg_volume, notes = _seg_label_map(seg, seg.get_volume)
    array = np.asarray(seg_volume.array)
    affine = np.asarray(seg_volume.affine, dtype=float)[:, [2, 1, 0, 3]]  # (slice, row, col) → xyz
    data, resampled, grid_notes = _onto_volume(array, affine, volume, what)
    notes = [
        "the SEG references none of the volume's instances: placed by its frame positions",
        *notes,
        *grid_notes,
    ]
    return _finish(
        catalog,
        row_or_uid,
        volume,
        data,
        names,
        resampled=resampled,
        notes=notes,
        source=source,
        name=name,
        overwrite=overwrite,
    )


# -- RTSTRUCT ---------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", text).strip("-.") or "roi"


def _referenced_series(ds: Any) -> set[str]:
    found = set()
    for frame in getattr(ds, "ReferencedFrameOfReferenceSequence", []):
        for study in getattr(frame, "RTReferencedStudySequence", []):
            for series in getattr(study, "RTReferencedSeriesSequence", []):
                found.add(str(series.SeriesInstanceUID))
    return found


def rasterise_contours(
    contours: list[NDArray[np.float64]], volume: xr.DataArray
) -> tuple[NDArray[np.bool_], list[str]]:
    """Fill closed planar contours (LPS points, one (n, 3) array each) on a volume's grid."""
    from skimage.draw import polygon

    shape, affine = grid_of(volume)
    inverse = np.linalg.inv(affine)
    columns = affine[:3, :2] / np.linalg.norm(affine[:3, :2], axis=0)
    normal = np.cross(columns[:, 0], columns[:, 1])
    normal_step = float(affine[:3, 2] @ normal)
    z_mm = np.asarray(volume["z"].values, dtype=float)
    half_gap = np.diff(z_mm).min() / 2 if len(z_mm) > 1 else abs(normal_step) / 2
    mask = np.zeros(shape, dtype=bool)
    notes: list[str] = []
    off_grid = 0
    for points in contours:
        idx = (inverse @ np.c_[points, np.ones(len(points))].T)[:3]
        x, y, t = idx
        k = int(np.argmin(np.abs(z_mm - float(t.mean()) * normal_step)))
        if abs(z_mm[k] - float(t.mean()) * normal_step) > half_gap + 1e-6:
            off_grid += 1
            continue
        if np.ptp(t) * abs(normal_step) > 0.1 * half_gap * 2:
            notes.append(f"a contour on slice {k} is not parallel to the slices; projected")
        rr, cc = polygon(y, x, shape=shape[1:])
        fill = np.zeros(shape[1:], dtype=bool)
        fill[rr, cc] = True
        mask[k] ^= fill
    if off_grid:
        notes.append(f"{off_grid} contour(s) lie outside the volume's slices: skipped")
    return mask, notes


def import_rtstruct(
    catalog: Catalog,
    row_or_uid: Any,
    path: str | os.PathLike[str],
    *,
    rois: list[str] | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> dict[str, ImportedLabels]:
    """Each ROI of an RTSTRUCT as a mask on the volume's exact grid (oblique included).

    Parameters
    ----------
    rois
        ROI names to import (default all with closed planar contours).
    name
        Store each ROI as a label image named ``<name>-<roi>`` next to the volume.
    """
    import pydicom

    ds = pydicom.dcmread(os.fspath(path))
    if str(getattr(ds, "Modality", "")) != "RTSTRUCT":
        raise DicomError("not an RTSTRUCT", path=os.fspath(path), tag="(0008,0060) Modality")
    volume = open_volume(catalog.location, volume_path(catalog, row_or_uid))
    roi_names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    notes: list[str] = []
    series = _referenced_series(ds)
    if series and volume.attrs.get("series_uid") not in series:
        notes.append(
            f"the RTSTRUCT references series {', '.join(sorted(series))}, not this volume's "
            f"{volume.attrs.get('series_uid')}: rasterised in patient coordinates anyway"
        )
        log.warning(notes[-1])
    out: dict[str, ImportedLabels] = {}
    for item in getattr(ds, "ROIContourSequence", []):
        roi = roi_names.get(int(item.ReferencedROINumber), f"roi-{item.ReferencedROINumber}")
        if rois is not None and roi not in rois:
            continue
        contours, skipped = [], 0
        for contour in getattr(item, "ContourSequence", []):
            if str(contour.ContourGeometricType) != "CLOSED_PLANAR":
                skipped += 1
                continue
            contours.append(np.asarray(contour.ContourData, dtype=float).reshape(-1, 3))
        if not contours:
            continue
        mask, roi_notes = rasterise_contours(contours, volume)
        if skipped:
            roi_notes.append(f"{skipped} contour(s) not CLOSED_PLANAR: skipped")
        out[roi] = _finish(
            catalog,
            row_or_uid,
            volume,
            mask,
            {1: roi},
            resampled=False,
            notes=[*notes, *roi_notes],
            source={"importer": "rtstruct", "path": os.fspath(path), "roi": roi},
            name=f"{name}-{_slug(roi)}" if name else None,
            overwrite=overwrite,
        )
    return out
