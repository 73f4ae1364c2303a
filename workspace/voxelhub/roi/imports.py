"""Bring masks made elsewhere onto a stored volume's grid: NIfTI / NRRD, DICOM SEG, RTSTRUCT.

Before anything is placed, the object's frame of reference and patient are compared with the
volume's (:func:`verify_reference`); an object that names this very series but another frame
of reference (rt-utils writes its own) is placed by the series reference, with a note.  After,
an import that labels no voxel raises :class:`~voxelhub.roi.errors.EmptyLabels`: nothing empty is
ever stored under a name.  Every failure is one of :mod:`voxelhub.roi.errors`, naming the file
and what to do; pydicom / highdicom / nibabel exceptions are kept as ``__cause__``.

* NIfTI (nibabel, exact sform, shear included) and NRRD (SimpleITK): copied as they are when
  their grid is the volume's; otherwise resampled with nearest neighbour, and the result says so
  (:attr:`ImportedLabels.notes`, and a log message).  A file that does not say where it lies
  (NIfTI qform and sform codes 0, NRRD without ``space``) is refused, and so are intensity
  images (negative values, fractions, or many values changing from voxel to voxel) and DICOM.
* DICOM SEG (:mod:`voxelhub.roi.seg`): frames decoded once with pydicom and placed by the SOP
  Instance UIDs they reference when those are the volume's slices, otherwise by their position
  along the slice normal (dcmqi SEGs, other copies of the series, tilted and irregular stacks).
  BINARY, FRACTIONAL (thresholded at 0.5 by default) and LABELMAP.  Overlapping segments give
  one mask per segment (``overlaps="split"``), since a label image holds one value per voxel.
* RTSTRUCT (:mod:`voxelhub.roi.rtstruct`): contour data parsed once, every contour of an ROI
  filled in one even-odd scanline pass (inner contours are holes), on the volume's exact grid
  (oblique and tilted too); ``boundary="centre"`` (voxel centres inside, the default) or
  ``"overlap"`` (every voxel the contour touches, as rt-utils draws).  Each ROI is its own mask,
  since ROIs overlap (a body contour holds the organs).

Each importer returns :class:`ImportedLabels` on the volume's coordinates (SEG and RTSTRUCT a
dict of them by name); give ``name=`` to store the result next to the volume
(:func:`voxelhub.roi.labels.write_labels`).
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
from voxelhub.errors import GeometryError
from voxelhub.roi.errors import (
    EmptyLabels,
    NoOrientation,
    NotARoiFile,
    NotLabels,
    PlacementError,
    ReferenceMismatch,
    UnreadableRoi,
)
from voxelhub.roi.grid import grid_of, nearest_onto, same_grid
from voxelhub.roi.labels import LabelImage, write_labels

log = logging.getLogger(__name__)

__all__ = [
    "ImportedLabels",
    "import_mask",
    "import_rtstruct",
    "import_seg",
    "verify_reference",
]

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


def _integer_labels(array: NDArray[Any], path: str, check: bool) -> NDArray[Any]:
    """Refuse intensities and probabilities: labels are whole numbers >= 0, not too many."""
    if array.dtype != bool and array.dtype.kind not in "iuf":
        raise NotLabels(f"holds {array.dtype} values, not labels", path=path)
    if array.dtype.kind == "f" and not (
        np.all(np.isfinite(array)) and np.all(np.mod(array, 1) == 0)
    ):
        raise NotLabels(
            "holds fractional values (a probability map?)",
            path=path,
            hint="Threshold it into a 0/1 mask first",
        )
    if array.dtype != bool and array.size and float(array.min()) < 0:
        raise NotLabels(
            f"holds negative values (down to {float(array.min()):g}): an intensity image "
            "(CT in HU?), not labels",
            path=path,
            hint="Give the mask or label image, not the image it was drawn on",
        )
    out = array if array.dtype == bool or array.dtype.kind in "iu" else array.astype(np.uint32)
    if check and out.dtype != bool:
        values = np.unique(out)
        changing = _neighbour_changes(out)
        if len(values) > 50 and changing > 0.25:
            raise NotLabels(
                f"holds {len(values)} distinct values that change between {changing:.0%} of "
                "neighbouring labelled voxels: an intensity image, not labels (labels are "
                "piecewise constant)",
                path=path,
                hint="Give the mask or label image, or pass check_labels=False if it really is one",
            )
    return out


def _neighbour_changes(array: NDArray[Any]) -> float:
    """Fraction of neighbouring non-zero voxel pairs (along x) whose values differ."""
    a, b = array[..., :-1], array[..., 1:]
    both = (a != 0) & (b != 0)
    pairs = int(both.sum())
    return float(((a != b) & both).sum()) / pairs if pairs else 0.0


def _is_dicom(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def read_mask_file(path: str | os.PathLike[str]) -> tuple[NDArray[Any], NDArray[np.float64]]:
    """A NIfTI or NRRD mask as a (z, y, x) array and its (x, y, z) index → LPS affine.

    Raises :class:`~voxelhub.roi.errors.NoOrientation` for a file that does not say where it lies
    (NIfTI with qform and sform codes 0, NRRD without ``space``), and
    :class:`~voxelhub.roi.errors.NotARoiFile` for DICOM files and what neither library reads.
    """
    path = os.fspath(path)
    if _is_dicom(path):
        raise NotARoiFile(
            "is a DICOM file, not a NIfTI/NRRD mask",
            path=path,
            hint="Use import_seg for DICOM SEG, import_rtstruct for RTSTRUCT; DICOM images are "
            "ingested with voxelhub.ingest",
        )
    if path.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            image: Any = nib.load(path)
            data = np.asanyarray(image.dataobj)
        except Exception as exc:  # nibabel raises several kinds for damaged files
            raise UnreadableRoi(f"not a readable NIfTI file ({exc})", path=path) from exc
        if int(image.header["qform_code"]) == 0 and int(image.header["sform_code"]) == 0:
            raise NoOrientation(
                "the NIfTI has no orientation (qform_code and sform_code are both 0), so where "
                "it lies in the patient is unknown",
                path=path,
                hint="Re-save it with the affine of the image it was drawn on "
                "(nibabel: Nifti1Image(mask, image.affine))",
            )
        while data.ndim > 3 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise NotLabels(f"expected a 3-D mask, got shape {data.shape}", path=path)
        return data.transpose(2, 1, 0), LPS_FROM_RAS @ np.asarray(image.affine, dtype=float)
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        img = reader.Execute()
    except RuntimeError as exc:
        raise UnreadableRoi(
            f"not a mask file SimpleITK reads ({str(exc).strip().splitlines()[-1]})", path=path
        ) from exc
    if path.endswith((".nrrd", ".nhdr")) and "NRRD_space" not in reader.GetMetaDataKeys():
        raise NoOrientation(
            "the NRRD has no 'space' field, so where it lies in the patient is unknown",
            path=path,
            hint="Re-save it with 'space', 'space directions' and 'space origin'",
        )
    if img.GetDimension() != 3:
        raise NotLabels(f"expected a 3-D mask, got {img.GetDimension()}-D", path=path)
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
    check_labels: bool = True,
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
    check_labels
        Refuse what looks like an intensity image: many distinct values that change between
        most neighbouring voxels (labels are piecewise constant).  Negative and fractional
        values are always refused.

    Raises
    ------
    NotARoiFile, UnreadableRoi, NoOrientation, NotLabels, EmptyLabels, GeometryError
        A DICOM file, an unreadable one, one that does not say where it lies, intensities or
        probabilities instead of labels, nothing labelled on this volume, or a grid it cannot
        be resampled from.
    """
    where = os.fspath(path)
    volume = catalog.stored_volume(row_or_uid).open()
    array, affine = read_mask_file(where)
    what = os.path.basename(where)
    array = _integer_labels(array, where, check_labels)
    _not_empty(array, where, "mask")
    data, resampled, notes = _onto_volume(array, affine, volume, what)
    if resampled:
        _not_empty(np.asarray(data), where, "mask")
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
        source={"importer": "mask", "path": where},
        name=name,
        overwrite=overwrite,
    )


# -- DICOM SEG --------------------------------------------------------------------------------
def _volume_meta(catalog: Catalog, row_or_uid: Any) -> tuple[str, xr.DataArray, dict[str, Any]]:
    stored = catalog.stored_volume(row_or_uid)
    group = stored.location.open_group(stored.store_path)
    meta: dict[str, Any] = dict(group.attrs.get("voxelhub") or {})  # type: ignore[arg-type]
    return stored.store_path, stored.open(), meta


def _dicom_value(meta: dict[str, Any], tag: str) -> str:
    element = (meta.get("dicom") or {}).get(tag) or {}
    values = element.get("Value") or [""]
    return str(values[0])


def verify_reference(
    meta: dict[str, Any],
    *,
    frame_of_reference: str,
    patient_id: str,
    path: str,
    what: str,
    references_volume: bool = False,
) -> list[str]:
    """Refuse an ROI drawn on another patient or in another frame of reference.

    Only values both sides carry are compared (a NIfTI has neither).  When the object names
    this very series (or its instances) but another frame of reference, the explicit reference
    wins and the mismatch is returned as a note: rt-utils writes a frame of reference of its own
    into the RTSTRUCTs it makes.  A volume stored de-identified carries replaced UIDs and IDs, so
    an ROI made on the original images fails this check: pass ``check_reference=False`` once you
    know it belongs to the volume.
    """
    problems, notes = [], []
    ours = _dicom_value(meta, "00200052")
    if frame_of_reference and ours and frame_of_reference != ours:
        text = f"frame of reference {frame_of_reference} (the volume's is {ours})"
        if references_volume:
            notes.append(
                f"the {what} names {text} but references this series itself: placed by the "
                "series reference"
            )
            log.warning("%s: %s", path, notes[-1])
        else:
            problems.append(text)
    theirs_patient = str(meta.get("patient_id", ""))
    if patient_id and theirs_patient and patient_id != theirs_patient:
        problems.append(f"patient {patient_id!r} (the volume's is {theirs_patient!r})")
    if problems:
        hint = "Import it onto a volume of that patient and frame of reference" + (
            "; the volume is de-identified, so if the ROI was drawn on its original images "
            "pass check_reference=False"
            if meta.get("deidentified")
            else "; pass check_reference=False only if you know it belongs to this volume"
        )
        raise ReferenceMismatch(
            f"the {what} was drawn in " + " and on ".join(problems), path=path, hint=hint
        )
    return notes


def _not_empty(data: Any, path: str, what: str) -> None:
    if not bool(np.any(data)):
        raise EmptyLabels(
            f"the {what} gives no labelled voxel on this volume",
            path=path,
            hint="Check that it belongs to this series; nothing was stored",
        )


def import_seg(
    catalog: Catalog,
    row_or_uid: Any,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    overlaps: str = "split",
    threshold: float = 0.5,
    check_reference: bool = True,
    source_name: str | None = None,
    overwrite: bool = False,
) -> dict[str, ImportedLabels]:
    """A DICOM SEG on a volume's grid: one label image, or one mask per segment if they overlap.

    Frames are placed on the volume's slices by the instances they reference, or by their
    position along the slice normal when those do not resolve (see :mod:`voxelhub.roi.seg`).

    Parameters
    ----------
    name
        Store the result: the label image ``name`` (value = segment number, named by the
        segment's label), or, when segments overlap and ``overlaps="split"``, one mask per
        segment named ``<name>-<segment label>``.
    overlaps
        What to do when a voxel is in more than one segment.  ``"split"`` (default): one 0/1
        mask per segment, so every segment is kept whole (OME-Zarr labels hold one value per
        voxel).  ``"error"``: raise :class:`~voxelhub.roi.errors.PlacementError`.  Segments that
        do not overlap always give one label image.
    threshold
        FRACTIONAL SEGs: a voxel is in the segment where value / MaximumFractionalValue >=
        ``threshold`` (default 0.5); the probabilities are not kept.
    check_reference
        Refuse a SEG of another frame of reference or patient (default).
    source_name
        What the stored label image records as its source instead of the path (ingest of a
        de-identified project never stores a path).

    Returns
    -------
    dict
        ``{label image name: ImportedLabels}`` (the name is ``name`` or ``"seg"``).

    Raises
    ------
    NotARoiFile, UnreadableRoi, ReferenceMismatch, PlacementError, EmptyLabels
        See :mod:`voxelhub.roi.errors`; each names the file and what to do.
    """
    from voxelhub.roi.seg import place_frames, read_seg

    if overlaps not in {"split", "error"}:
        raise ValueError(f"overlaps must be 'split' or 'error', not {overlaps!r}")
    where = os.fspath(path)
    _, volume, meta = _volume_meta(catalog, row_or_uid)
    seg = read_seg(where, threshold=threshold)
    uids = [str(u) for u in meta.get("source_instance_uids", [])]
    ref_notes: list[str] = []
    if check_reference:
        ref_notes = verify_reference(
            meta,
            frame_of_reference=seg.frame_of_reference,
            patient_id=seg.patient_id,
            path=where,
            what="SEG",
            references_volume=str(meta.get("series_uid", "")) in seg.referenced_series
            or bool(set(uids) & {u for u in seg.referenced if u}),
        )
    placed, sampled, notes = place_frames(seg, volume, uids)
    notes = [*notes, *seg.notes, *ref_notes]
    shape = tuple(int(s) for s in volume.shape)
    source = {
        "importer": "seg",
        "path": where if source_name is None else source_name,
        "sop_instance_uid": seg.sop_instance_uid,
    }
    base = name or "seg"
    masks: dict[int, NDArray[np.bool_]] = {}
    if seg.seg_type == "LABELMAP":
        label = np.zeros(shape, dtype=np.uint16)
        for k, frame in placed.get(0, {}).items():
            label[k] = frame
        present = [int(v) for v in np.unique(label) if v != 0]
        names = {v: seg.segment_names.get(v, f"segment-{v}") for v in present}
    else:
        for number in sorted(placed):
            mask = np.zeros(shape, dtype=bool)
            for k, frame in placed[number].items():
                mask[k] |= frame.astype(bool)
            if mask.any():
                masks[number] = mask
        count = np.zeros(shape, dtype=np.uint8)
        for mask in masks.values():
            count += mask
        overlapping = int((count > 1).sum())
        if overlapping and overlaps == "error":
            raise PlacementError(
                f"its segments overlap in {overlapping} voxel(s)",
                path=where,
                hint="Pass overlaps='split' to import one mask per segment",
            )
        if overlapping:
            notes.append(
                f"segments overlap in {overlapping} voxel(s): one mask per segment "
                f"({len(masks)} masks)"
            )
            out: dict[str, ImportedLabels] = {}
            for number, mask in masks.items():
                label_name = seg.segment_names.get(number, f"segment-{number}")
                key = f"{base}-{_slug(label_name)}"
                out[key] = _finish(
                    catalog,
                    row_or_uid,
                    volume,
                    mask,
                    {1: label_name},
                    resampled=sampled,
                    notes=notes,
                    source={**source, "segment_number": number},
                    name=key if name is not None else None,
                    overwrite=overwrite,
                )
            return out
        dtype = np.uint8 if max(masks, default=0) < 256 else np.uint16
        label = np.zeros(shape, dtype=dtype)
        for number, mask in masks.items():
            label[mask] = number
        names = {v: seg.segment_names.get(v, f"segment-{v}") for v in masks}
    _not_empty(label, where, "SEG")
    empty = sorted(set(seg.segment_names) - set(names))
    if empty:
        notes.append(
            "segment(s) with no voxel on this volume: "
            + ", ".join(f"{n} {seg.segment_names[n]!r}" for n in empty)
        )
    return {
        base: _finish(
            catalog,
            row_or_uid,
            volume,
            label,
            names,
            resampled=sampled,
            notes=notes,
            source=source,
            name=name,
            overwrite=overwrite,
        )
    }


# -- RTSTRUCT ---------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", text).strip("-.") or "roi"


def rasterise_contours(
    contours: list[NDArray[np.float64]], volume: xr.DataArray, *, boundary: str = "centre"
) -> tuple[NDArray[np.bool_], list[str]]:
    """Fill closed planar contours (LPS points, one (n, 3) array each) on a volume's grid.

    Even-odd scanline fill (:func:`voxelhub.roi.rtstruct.rasterise`); ``boundary`` is
    ``"centre"`` (voxel centres inside) or ``"overlap"`` (every voxel the contour touches).
    """
    from voxelhub.roi.rtstruct import rasterise

    return rasterise(contours, volume, boundary=boundary)


def import_rtstruct(
    catalog: Catalog,
    row_or_uid: Any,
    path: str | os.PathLike[str],
    *,
    rois: list[str] | None = None,
    name: str | None = None,
    boundary: str = "centre",
    check_reference: bool = True,
    source_name: str | None = None,
    overwrite: bool = False,
) -> dict[str, ImportedLabels]:
    """Each ROI of an RTSTRUCT as a mask on the volume's exact grid (oblique included).

    Parameters
    ----------
    rois
        ROI names to import (default all with closed planar contours).
    name
        Store each ROI as a label image named ``<name>-<roi>`` next to the volume.
    boundary
        ``"centre"`` (default): a voxel is in the ROI when its centre is inside the contour.
        ``"overlap"``: when the contour touches its pixel at all, as rt-utils and DicomRTTool
        draw (keeps the whole ring of a contour traced through pixel centres).  See
        :mod:`voxelhub.roi.rtstruct`.
    check_reference
        Refuse an RTSTRUCT of another frame of reference or patient (default).
    source_name
        What the stored label images record as their source instead of the path.

    Raises
    ------
    NotARoiFile, UnreadableRoi, ReferenceMismatch, EmptyLabels
        Not an RTSTRUCT or not DICOM, damaged, drawn on another patient or frame of reference,
        or an ROI with contours that gives no voxel on this volume (nothing is stored then;
        pass ``rois=`` to import the others).
    """
    from voxelhub.roi.rtstruct import read_rtstruct

    where = os.fspath(path)
    struct = read_rtstruct(where)
    _, volume, meta = _volume_meta(catalog, row_or_uid)
    notes: list[str] = []
    series = struct.referenced_series
    if check_reference:
        notes += verify_reference(
            meta,
            frame_of_reference=struct.frame_of_reference,
            patient_id=struct.patient_id,
            path=where,
            what="RTSTRUCT",
            references_volume=str(meta.get("series_uid", "")) in series,
        )
    if series and volume.attrs.get("series_uid") not in series:
        notes.append(
            f"the RTSTRUCT references series {', '.join(sorted(series))}, not this volume's "
            f"{volume.attrs.get('series_uid')}: rasterised in patient coordinates "
            "(same frame of reference)"
        )
        log.warning(notes[-1])
    wanted = [r for r in struct.rois if r.contours and (rois is None or r.name in rois)]
    if rois is not None:
        unknown = sorted(set(rois) - {r.name for r in struct.rois})
        if unknown:
            raise KeyError(
                f"{where}: no ROI named {', '.join(map(repr, unknown))}; "
                f"it holds {', '.join(repr(r.name) for r in struct.rois)}"
            )
    if not wanted:
        raise EmptyLabels(
            "holds no ROI with closed planar contours"
            + (f" among {', '.join(map(repr, rois))}" if rois else ""),
            path=where,
            hint="Points and open polylines are not imported as masks",
        )
    masks: dict[str, tuple[NDArray[np.bool_], list[str]]] = {}
    empty = []
    for roi in wanted:
        mask, roi_notes = rasterise_contours(roi.contours, volume, boundary=boundary)
        if roi.skipped:
            roi_notes.append(f"{roi.skipped} contour(s) not CLOSED_PLANAR: skipped")
        if not mask.any():
            empty.append(roi.name)
        masks[roi.name] = (mask, roi_notes)
    if empty:
        raise EmptyLabels(
            f"ROI(s) {', '.join(map(repr, empty))} give no voxel on this volume "
            "(contours outside its slices or field of view)",
            path=where,
            hint="Check that the RTSTRUCT belongs to this series, or pass rois= without them; "
            "nothing was stored",
        )
    out: dict[str, ImportedLabels] = {}
    for roi_name, (mask, roi_notes) in masks.items():
        out[roi_name] = _finish(
            catalog,
            row_or_uid,
            volume,
            mask,
            {1: roi_name},
            resampled=False,
            notes=[*notes, *roi_notes],
            source={
                "importer": "rtstruct",
                "path": where if source_name is None else source_name,
                "roi": roi_name,
                "boundary": boundary,
            },
            name=f"{name}-{_slug(roi_name)}" if name else None,
            overwrite=overwrite,
        )
    return out
