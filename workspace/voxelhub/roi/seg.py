"""DICOM SEG frames put on a volume's slices, whoever wrote the SEG (dcmqi, highdicom, …).

The frames are decoded once with pydicom (every transfer syntax pydicom reads) and their
functional groups read directly, so no writer's habit has to match a library's expectations
(dcmqi leaves *Spatial Locations Preserved* out, which makes highdicom refuse to index by source
instance).  Each frame goes to one slice of the volume:

1. by the SOP Instance UID it references, when that UID is one of the volume's slices (the volume
   keeps ``source_instance_uids`` in spatial order);
2. otherwise by its Image Position (Patient) along the slice normal: the slice whose plane is
   within a tenth of the smallest slice gap.  Slice planes come from the volume's own geometry
   (its affine, and the measured slice offsets on irregular stacks), so tilted, irregular and
   missing-slice stacks are handled exactly.

Inside its slice a frame is copied with an integer pixel offset when its pixel grid is the
slice's (the usual case), and sampled with nearest neighbour otherwise (another pixel spacing or
field of view), which the result says.  A SEG whose frames lie between the volume's slices (made
on another slice grid) is a :class:`~voxelhub.roi.errors.PlacementError`.

Segmentation types:

* ``BINARY``: a voxel is in a segment where the frame is 1.
* ``FRACTIONAL``: probability or occupancy, 0 … MaximumFractionalValue.  Label images hold
  integers, so a voxel is in the segment where ``value / MaximumFractionalValue >= threshold``
  (default 0.5, the centre of the range); the probabilities themselves are not kept.
* ``LABELMAP``: frame values are segment numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from voxelhub.roi.errors import NotARoiFile, PlacementError, UnreadableRoi, read_roi_dicom
from voxelhub.roi.grid import grid_of

__all__ = ["SegFile", "SlicePlanes", "place_frames", "read_seg", "slice_planes"]

SEG_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
}


@dataclass
class SegFile:
    """What a SEG holds, decoded once: frames, their geometry and their segment."""

    path: str
    sop_instance_uid: str
    seg_type: str
    segment_names: dict[int, str]
    frames: NDArray[Any]  # (n, rows, columns), already thresholded to bool for BINARY/FRACTIONAL
    segment_of_frame: NDArray[np.int64]  # 0 for LABELMAP frames (values are the segments)
    positions: NDArray[np.float64] | None  # (n, 3) LPS, None when the SEG has none
    orientations: NDArray[np.float64] | None  # (n, 6)
    spacings: NDArray[np.float64] | None  # (n, 2) row spacing, column spacing
    referenced: list[str | None]  # SOP Instance UID each frame was derived from
    frame_of_reference: str
    patient_id: str
    referenced_series: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def _group(ds: Any, index: int, sequence: str) -> Any:
    """A functional group item for frame ``index``: per-frame first, then shared."""
    for groups in (
        ds.get("PerFrameFunctionalGroupsSequence"),
        ds.get("SharedFunctionalGroupsSequence"),
    ):
        if not groups:
            continue
        item = groups[index] if groups is ds.get("PerFrameFunctionalGroupsSequence") else groups[0]
        if sequence in item and len(item[sequence].value):
            return item[sequence].value[0]
    return None


def _referenced_uid(ds: Any, index: int) -> str | None:
    derivation = _group(ds, index, "DerivationImageSequence")
    if derivation is None:
        return None
    sources = list(getattr(derivation, "SourceImageSequence", []))
    if len(sources) != 1 or "ReferencedFrameNumber" in sources[0]:
        return None  # several sources, or one frame of a multi-frame source: use positions
    return str(sources[0].ReferencedSOPInstanceUID)


def read_seg(path: str | os.PathLike[str], *, threshold: float = 0.5) -> SegFile:
    """Decode a SEG file; every pydicom failure becomes a VoxelHub error naming the file."""
    ds, where = read_roi_dicom(path, "SEG")
    modality = str(ds.get("Modality", ""))
    sop_class = str(ds.get("SOPClassUID", ""))
    if modality != "SEG" and sop_class not in SEG_SOP_CLASSES:
        kind = "an RTSTRUCT" if modality == "RTSTRUCT" else f"a {modality or 'non-SEG'} object"
        raise NotARoiFile(
            f"is {kind}, not a DICOM SEG (Modality {modality!r}, SOP Class {sop_class})",
            path=where,
            hint="Use import_rtstruct for RTSTRUCT, import_mask for NIfTI/NRRD; images are "
            "ingested with voxelhub.ingest",
        )
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    if seg_type not in {"BINARY", "FRACTIONAL", "LABELMAP"}:
        raise UnreadableRoi(
            f"SegmentationType {seg_type!r} is not BINARY, FRACTIONAL or LABELMAP",
            path=where,
            hint="Re-export the segmentation as a BINARY SEG",
        )
    if "PerFrameFunctionalGroupsSequence" not in ds:
        raise UnreadableRoi(
            "has no Per-Frame Functional Groups (a TILED_FULL whole-slide SEG?)",
            path=where,
            hint="Only SEGs of cross-sectional image series are imported onto volumes",
        )
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises many kinds for unsupported / damaged pixel data
        raise UnreadableRoi(
            f"its pixel data could not be decoded ({type(exc).__name__}: {exc})",
            path=where,
            hint="Install the pydicom decoder for its transfer syntax "
            f"({ds.file_meta.get('TransferSyntaxUID', '?')}) or re-export it uncompressed",
        ) from exc
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.shape[0] != n:
        raise UnreadableRoi(
            f"NumberOfFrames is {n} but the pixel data holds {pixels.shape[0]} frame(s)",
            path=where,
            hint="The file is damaged: re-export it",
        )
    names = {
        int(item.SegmentNumber): str(
            item.get("SegmentLabel", "") or f"segment-{item.SegmentNumber}"
        )
        for item in ds.get("SegmentSequence", [])
    }
    notes: list[str] = []
    if seg_type == "FRACTIONAL":
        top = float(ds.get("MaximumFractionalValue", 255) or 255)
        frames: NDArray[Any] = pixels.astype(np.float32) / top >= threshold
        notes.append(
            f"FRACTIONAL SEG: voxels with value >= {threshold:g} x MaximumFractionalValue "
            f"({top:g}) are in the segment; the probabilities are not kept"
        )
    elif seg_type == "BINARY":
        frames = pixels > 0
    else:
        frames = pixels
    segment_of_frame = np.zeros(n, dtype=np.int64)
    positions = np.full((n, 3), np.nan)
    orientations = np.full((n, 6), np.nan)
    spacings = np.full((n, 2), np.nan)
    referenced: list[str | None] = []
    for i in range(n):
        ident = _group(ds, i, "SegmentIdentificationSequence")
        if ident is not None:
            segment_of_frame[i] = int(ident.ReferencedSegmentNumber)
        elif seg_type != "LABELMAP":
            raise UnreadableRoi(
                f"frame {i + 1} names no segment (no Segment Identification Sequence)",
                path=where,
                hint="The SEG is malformed: re-export it",
            )
        position = _group(ds, i, "PlanePositionSequence")
        if position is not None and "ImagePositionPatient" in position:
            positions[i] = [float(v) for v in position.ImagePositionPatient]
        orientation = _group(ds, i, "PlaneOrientationSequence")
        if orientation is not None and "ImageOrientationPatient" in orientation:
            orientations[i] = [float(v) for v in orientation.ImageOrientationPatient]
        measures = _group(ds, i, "PixelMeasuresSequence")
        if measures is not None and "PixelSpacing" in measures:
            spacings[i] = [float(v) for v in measures.PixelSpacing]
        referenced.append(_referenced_uid(ds, i))
    if seg_type == "LABELMAP" and not names:
        names = {int(v): f"segment-{int(v)}" for v in np.unique(frames) if v != 0}
    return SegFile(
        path=where,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        seg_type=seg_type,
        segment_names=names,
        frames=frames,
        segment_of_frame=segment_of_frame,
        positions=None if np.isnan(positions).any() else positions,
        orientations=None if np.isnan(orientations).any() else orientations,
        spacings=None if np.isnan(spacings).any() else spacings,
        referenced=referenced,
        frame_of_reference=str(ds.get("FrameOfReferenceUID", "")),
        patient_id=str(ds.get("PatientID", "")),
        referenced_series={
            str(item.get("SeriesInstanceUID", ""))
            for item in ds.get("ReferencedSeriesSequence", [])
        },
        notes=notes,
    )


@dataclass(frozen=True)
class SlicePlanes:
    """Where each slice of a volume lies: its first voxel, in-plane axes, normal position."""

    origins: NDArray[np.float64]  # (nz, 3) LPS of voxel (0, 0) of each slice
    column_step: NDArray[np.float64]  # LPS step to the next column (x index)
    row_step: NDArray[np.float64]  # LPS step to the next row (y index)
    normal: NDArray[np.float64]  # unit normal of the slices
    along_normal: NDArray[np.float64]  # (nz,) origins · normal, mm
    tolerance: float  # mm: a plane closer than this to a slice lies on it


def slice_planes(volume: xr.DataArray) -> SlicePlanes:
    """Each slice's plane from the volume's geometry (exact on tilted and irregular stacks)."""
    _shape, affine = grid_of(volume)
    column_step, row_step, step = affine[:3, 0], affine[:3, 1], affine[:3, 2]
    normal = np.cross(column_step, row_step)
    normal /= np.linalg.norm(normal)
    along = float(step @ normal)
    z = np.asarray(volume["z"].values, dtype=float)
    if abs(along) < 1e-9:
        raise PlacementError("the volume's slice step lies in the slice plane", path=None)
    # z holds each slice's distance from the first along the normal (measured, on irregular
    # stacks); the stack moves along ``step``, sheared under gantry tilt
    offsets = (z - z[0]) * np.sign(along)
    origins = affine[:3, 3][None, :] + np.outer(offsets / along, step)
    gaps = np.abs(np.diff(z))
    gap = float(gaps.min()) if len(gaps) else abs(along)
    return SlicePlanes(
        origins, column_step, row_step, normal, origins @ normal, max(0.1 * gap, 1e-3)
    )


def _frame_slices(seg: SegFile, planes: SlicePlanes, uids: list[str]) -> tuple[list[int], str]:
    """The volume slice of every frame: by referenced instance, else by position."""
    index = {u: k for k, u in enumerate(uids)} if len(set(uids)) == len(uids) else {}
    by_uid = [index.get(u) if u is not None else None for u in seg.referenced]
    if index and all(k is not None for k in by_uid):
        slices = [int(k) for k in by_uid if k is not None]
        if seg.positions is not None:
            off = np.abs(seg.positions @ planes.normal - planes.along_normal[slices])
            worst = int(np.argmax(off))
            if off[worst] > max(planes.tolerance, 0.5):
                raise PlacementError(
                    f"frame {worst + 1} references slice {slices[worst]} by SOP Instance UID "
                    f"but its position lies {off[worst]:.2f} mm from that slice",
                    path=seg.path,
                    hint="The SEG contradicts itself; re-export it from the images it was drawn on",
                )
        return slices, (
            f"{len(slices)} frame(s) matched to the volume's slices by referenced SOP Instance UID"
        )
    if seg.positions is None:
        raise PlacementError(
            "its frames reference none of the volume's instances and carry no Image Position "
            "(Patient)",
            path=seg.path,
            hint="Import it onto the series it was drawn on (same SOP Instance UIDs)",
        )
    distance = seg.positions @ planes.normal
    nearest = np.abs(distance[:, None] - planes.along_normal[None, :]).argmin(axis=1)
    off = np.abs(distance - planes.along_normal[nearest])
    missed = np.nonzero(off > planes.tolerance)[0]
    if len(missed):
        raise PlacementError(
            f"{len(missed)} of {len(distance)} frame(s) lie between the volume's slices "
            f"(frame {missed[0] + 1} is {off[missed[0]]:.2f} mm from the nearest one; "
            f"tolerance {planes.tolerance:.2f} mm): the SEG was made on another slice grid",
            path=seg.path,
            hint="Import it onto the series it was drawn on, or resample it to a NIfTI mask on "
            "this volume's grid first",
        )
    matched = sum(u is not None and u in index for u in seg.referenced)
    why = (
        "the referenced instances do not resolve to this volume's slices"
        if matched == 0
        else f"only {matched} of {len(seg.referenced)} referenced instances resolve"
    )
    return [int(k) for k in nearest], (
        f"{len(distance)} frame(s) placed by their position along the slice normal ({why})"
    )


def place_frames(
    seg: SegFile, volume: xr.DataArray, uids: list[str]
) -> tuple[dict[int, dict[int, NDArray[Any]]], bool, list[str]]:
    """Every frame on its slice, in the slice's pixel grid.

    Returns ``{segment: {slice: 2-D array}}`` (for LABELMAP SEGs the single key 0 holds
    segment numbers), whether any frame had to be sampled (not copied), and notes.
    """
    planes = slice_planes(volume)
    shape, _ = grid_of(volume)
    slices, how = _frame_slices(seg, planes, uids)
    notes = [how]
    rows, cols = shape[1], shape[2]
    out: dict[int, dict[int, NDArray[Any]]] = {}
    sampled = 0
    for i, k in enumerate(slices):
        frame = seg.frames[i]
        if seg.positions is None or seg.orientations is None or seg.spacings is None:
            if frame.shape != (rows, cols):
                raise PlacementError(
                    f"frame {i + 1} is {frame.shape} but the volume's slices are {(rows, cols)}, "
                    "and the SEG has no plane position or orientation to place it by",
                    path=seg.path,
                )
            placed = frame
        else:
            placed, exact = _onto_slice(frame, i, k, seg, planes, (rows, cols))
            sampled += not exact
        slot = out.setdefault(int(seg.segment_of_frame[i]), {})
        if k in slot:
            slot[k] = np.maximum(slot[k], placed)
        else:
            slot[k] = placed
    if sampled:
        notes.append(
            f"{sampled} frame(s) are on another pixel grid than the slices: sampled with "
            "nearest neighbour"
        )
    return out, bool(sampled), notes


def _onto_slice(
    frame: NDArray[Any],
    i: int,
    k: int,
    seg: SegFile,
    planes: SlicePlanes,
    shape: tuple[int, int],
) -> tuple[NDArray[Any], bool]:
    assert seg.positions is not None and seg.orientations is not None and seg.spacings is not None
    row_dir, col_dir = seg.orientations[i, :3], seg.orientations[i, 3:]
    frame_normal = np.cross(row_dir, col_dir)
    if abs(float(frame_normal @ planes.normal)) < 0.999:
        angle = np.degrees(np.arccos(min(1.0, abs(float(frame_normal @ planes.normal)))))
        raise PlacementError(
            f"frame {i + 1} is {angle:.1f} degrees out of the volume's slice plane",
            path=seg.path,
            hint="Import it onto the series it was drawn on",
        )
    row_spacing, col_spacing = seg.spacings[i]
    # frame (column, row) of the volume's pixel (c, r): an affine map fc = a0 + a1 c + a2 r
    base = planes.origins[k] - seg.positions[i]
    a = (
        np.array([base @ row_dir, planes.column_step @ row_dir, planes.row_step @ row_dir])
        / col_spacing
    )
    b = (
        np.array([base @ col_dir, planes.column_step @ col_dir, planes.row_step @ col_dir])
        / row_spacing
    )
    rows, cols = shape
    out = np.zeros(shape, dtype=frame.dtype)
    fr_n, fc_n = frame.shape
    if (
        np.allclose([a[1], a[2], b[1], b[2]], [1, 0, 0, 1], atol=0.01 / max(rows, cols))
        and abs(a[0] - round(a[0])) < 0.01
        and abs(b[0] - round(b[0])) < 0.01
    ):
        dc, dr = round(a[0]), round(b[0])  # volume pixel (c, r) = frame (c+dc, r+dr)
        r0, r1 = max(0, -dr), min(rows, fr_n - dr)
        c0, c1 = max(0, -dc), min(cols, fc_n - dc)
        if r0 < r1 and c0 < c1:
            out[r0:r1, c0:c1] = frame[r0 + dr : r1 + dr, c0 + dc : c1 + dc]
        return out, True
    c = np.arange(cols)[None, :]
    r = np.arange(rows)[:, None]
    fc = np.rint(a[0] + a[1] * c + a[2] * r).astype(np.int64)
    fr = np.rint(b[0] + b[1] * c + b[2] * r).astype(np.int64)
    inside = (fc >= 0) & (fc < fc_n) & (fr >= 0) & (fr < fr_n)
    out[inside] = frame[fr[inside], fc[inside]]
    return out, False
