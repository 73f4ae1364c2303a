"""RTSTRUCT contours onto a volume's grid: parsed once, filled by an even-odd scanline in numpy.

Contour data is parsed straight from the file's bytes (one ``numpy`` conversion per contour, no
per-number ``DSfloat``), every point of an ROI is taken to voxel indices with one matrix
product (the inverse of the volume's affine: oblique and tilted grids included), and every
contour of the ROI is filled in one vectorised pass:

* each edge gives its crossings with the rows it spans (half-open in y, so a vertex on a row is
  counted once);
* crossings are sorted by (slice, row, x); by the even-odd rule the 1st-2nd, 3rd-4th … crossings
  of a row bound the inside, so inner contours (holes) and contours of several parts on one slice
  need no special case;
* the spans become +1/-1 marks in a difference array that a cumulative sum along x turns into
  the mask.

Boundary rule (``boundary=``):

``"centre"`` (default)
    A voxel is in the ROI when its centre lies inside the contour (half-open: a centre exactly
    on the contour counts on its low-x and low-y edges only, so two contours sharing an edge never
    share a voxel; after an oblique transform "exactly" is up to rounding).  This is the
    sampling definition pyradiomics and most planning systems use; for contours traced through
    pixel centres it leaves out part of the boundary ring.
``"overlap"``
    A voxel is in the ROI when the contour's filled area overlaps its pixel square: every voxel
    the centre rule keeps, plus every voxel whose square an edge passes through (an edge only
    touching a square's corner, up to a thousandth of a pixel, does not count).  For contours
    traced through pixel centres this is what rt-utils (``cv2.fillPoly`` on rounded vertices)
    draws: on its own RTSTRUCT of the 140-slice CT the two are voxel-identical
    (``benchmarks/roi.py``).  It keeps the whole ring of such a contour, and contours of one or
    two points (single voxels, thin lines) too; inner contours lose their boundary ring
    (holes shrink).

A contour goes to the slice whose plane (along the normal) its mean position lies on, within half
the smallest gap between two slices; contours further from every slice (between slices, or
outside the stack) are counted, skipped and named in the import's notes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from voxelhub.roi.errors import NotARoiFile, UnreadableRoi, read_roi_dicom
from voxelhub.roi.grid import grid_of

__all__ = ["BOUNDARY_RULES", "RtRoi", "RtStruct", "rasterise", "read_rtstruct"]

BOUNDARY_RULES = ("centre", "overlap")


@dataclass
class RtRoi:
    """One ROI: its number, name and closed planar contours as (n, 3) LPS point arrays."""

    number: int
    name: str
    contours: list[NDArray[np.float64]]
    skipped: int  # contours that are not CLOSED_PLANAR (points, open polylines)


@dataclass
class RtStruct:
    """An RTSTRUCT's ROIs and what it refers to."""

    path: str
    rois: list[RtRoi]
    frame_of_reference: str
    patient_id: str
    referenced_series: set[str]


def _numbers(element: Any) -> NDArray[np.float64]:
    """A DS multi-value as floats, from the raw bytes when pydicom has not converted it yet."""
    value = element.value
    if isinstance(value, bytes | bytearray):
        text = bytes(value).replace(b"\x00", b" ").strip()
        if not text:
            return np.zeros(0)
        return np.array(text.split(b"\\"), dtype=float)
    return np.asarray([float(v) for v in (value if hasattr(value, "__len__") else [value])])


def read_rtstruct(path: str | os.PathLike[str]) -> RtStruct:
    """An RTSTRUCT's ROIs with their contours; pydicom failures become VoxelHub errors."""
    ds, where = read_roi_dicom(path, "RTSTRUCT")
    modality = str(ds.get("Modality", ""))
    if modality != "RTSTRUCT":
        raise NotARoiFile(
            f"is a {modality or 'non-RTSTRUCT'} object, not an RTSTRUCT (Modality {modality!r})",
            path=where,
            hint="Use import_seg for DICOM SEG, import_mask for NIfTI/NRRD; images are "
            "ingested with voxelhub.ingest",
        )
    try:
        names = {int(r.ROINumber): str(r.get("ROIName", "")) for r in ds.StructureSetROISequence}
        frames = {
            str(r.get("ReferencedFrameOfReferenceUID", "")) for r in ds.StructureSetROISequence
        }
        series: set[str] = set()
        for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
            frames.add(str(frame.get("FrameOfReferenceUID", "")))
            for study in frame.get("RTReferencedStudySequence", []):
                for item in study.get("RTReferencedSeriesSequence", []):
                    series.add(str(item.SeriesInstanceUID))
        rois: list[RtRoi] = []
        for item in ds.get("ROIContourSequence", []):
            number = int(item.ReferencedROINumber)
            contours, skipped = [], 0
            for contour in item.get("ContourSequence", []):
                if str(contour.get("ContourGeometricType", "")) != "CLOSED_PLANAR":
                    skipped += 1
                    continue
                points = _numbers(contour.get_item("ContourData"))
                if not len(points) or len(points) % 3:  # 1 or 2 points: only "overlap" draws
                    skipped += 1
                    continue
                contours.append(points.reshape(-1, 3))
            rois.append(RtRoi(number, names.get(number) or f"roi-{number}", contours, skipped))
    except (AttributeError, KeyError, ValueError, TypeError) as exc:
        raise UnreadableRoi(
            f"its structure set is malformed ({type(exc).__name__}: {exc})",
            path=where,
            hint="Re-export the RTSTRUCT from the planning system",
        ) from exc
    frames.discard("")
    if len(frames) > 1:
        raise UnreadableRoi(
            f"its ROIs are in {len(frames)} frames of reference ({', '.join(sorted(frames))})",
            path=where,
            hint="Split the structure set per frame of reference",
        )
    return RtStruct(
        where,
        rois,
        next(iter(frames), str(ds.get("FrameOfReferenceUID", ""))),
        str(ds.get("PatientID", "")),
        series,
    )


def _slice_of_contours(
    contours: list[NDArray[np.float64]], volume: xr.DataArray
) -> tuple[list[NDArray[np.float64]], NDArray[np.int64], int, int]:
    """Contours in voxel (x, y) and the slice each lies on; counts of skipped and tilted ones."""
    from voxelhub.roi.seg import slice_planes

    _, affine = grid_of(volume)
    planes = slice_planes(volume)
    inverse = np.linalg.inv(affine)[:2]  # x, y only: the slice comes from the normal
    lengths = np.array([len(c) for c in contours])
    points = np.concatenate(contours)
    along = points @ planes.normal
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    mean_along = np.add.reduceat(along, starts) / lengths
    spread = np.maximum.reduceat(along, starts) - np.minimum.reduceat(along, starts)
    order = np.argsort(planes.along_normal)
    sorted_along = planes.along_normal[order]
    pos = np.clip(np.searchsorted(sorted_along, mean_along), 1, max(1, len(order) - 1))
    if len(order) == 1:
        nearest = np.zeros(len(contours), dtype=np.int64)
    else:
        left = sorted_along[pos - 1]
        right = sorted_along[pos]
        pos = np.where(np.abs(mean_along - left) <= np.abs(right - mean_along), pos - 1, pos)
        nearest = order[pos]
    gaps = np.abs(np.diff(sorted_along))
    half = (float(gaps.min()) if len(gaps) else float(volume.attrs["spacing_zyx"][0])) / 2
    off = np.abs(mean_along - planes.along_normal[nearest])
    keep = off <= half + 1e-6
    # each slice has its own origin (sheared under tilt): take points relative to their slice
    shift = planes.origins[nearest] - planes.origins[0]
    xy = inverse @ np.c_[points - np.repeat(shift, lengths, axis=0), np.ones(len(points))].T
    pieces = np.split(xy.T, np.cumsum(lengths)[:-1])
    kept = [p for p, k in zip(pieces, keep, strict=True) if k]
    tilted = int((spread[keep] > 0.2 * half).sum())
    return kept, nearest[keep], int((~keep).sum()), tilted


def _edges(
    pieces: list[NDArray[np.float64]], slices: NDArray[np.int64]
) -> tuple[
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.int64],
]:
    """Every closing edge of every contour: x0, y0, x1, y1 and its slice."""
    lengths = np.array([len(p) for p in pieces])
    xy = np.concatenate(pieces)
    nxt = np.arange(len(xy)) + 1
    ends = np.cumsum(lengths) - 1
    nxt[ends] = ends - lengths + 1  # the last point closes back to the first
    return xy[:, 0], xy[:, 1], xy[nxt, 0], xy[nxt, 1], np.repeat(slices, lengths)


def _fill_spans(
    shape: tuple[int, int, int],
    x0: NDArray[np.float64],
    y0: NDArray[np.float64],
    x1: NDArray[np.float64],
    y1: NDArray[np.float64],
    k: NDArray[np.int64],
) -> NDArray[np.bool_]:
    """Even-odd scanline fill of all edges at once: voxel centres inside."""
    _nz, ny, nx = shape
    mask = np.zeros(shape, dtype=bool)
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    first = np.clip(np.ceil(lo), 0, ny).astype(np.int64)  # rows r with lo <= r < hi
    last = np.clip(np.ceil(hi), 0, ny).astype(np.int64)
    count = np.maximum(last - first, 0)
    if not count.any():
        return mask
    edge = np.repeat(np.arange(len(x0)), count)
    row = first[edge] + (np.arange(len(edge)) - np.repeat(np.cumsum(count) - count, count))
    t = (row - y0[edge]) / (y1[edge] - y0[edge])
    x = x0[edge] + t * (x1[edge] - x0[edge])
    slab = k[edge]
    order = np.lexsort((x, row, slab))
    x, row, slab = x[order], row[order], slab[order]
    # pairs (1st, 2nd), (3rd, 4th) … of each row bound the inside: a row's crossings come in
    # even numbers because every closed contour crosses each row an even number of times
    xa, xb = x[0::2], x[1::2]
    rows, slabs = row[0::2], slab[0::2]
    c0 = np.clip(np.ceil(xa), 0, nx).astype(np.int64)  # columns c with xa <= c < xb
    c1 = np.clip(np.ceil(xb), 0, nx).astype(np.int64)
    good = c1 > c0
    touched, inverse = np.unique(slabs[good], return_inverse=True)
    diff = np.zeros((len(touched), ny, nx + 1), dtype=np.int8)
    flat_rows = (inverse * ny + rows[good]) * (nx + 1)
    np.add.at(diff.reshape(-1), flat_rows + c0[good], 1)
    np.add.at(diff.reshape(-1), flat_rows + c1[good], -1)
    mask[touched] = np.cumsum(diff[..., :nx], axis=-1, dtype=np.int8) > 0
    return mask


def _edge_pixels(
    shape: tuple[int, int, int],
    x0: NDArray[np.float64],
    y0: NDArray[np.float64],
    x1: NDArray[np.float64],
    y1: NDArray[np.float64],
    k: NDArray[np.int64],
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Every pixel whose square an edge passes through (supercover), vectorised."""
    _nz, ny, nx = shape
    dx, dy = x1 - x0, y1 - y0
    # parameters t where the edge crosses a pixel border (half-integer x or y)
    parts_t = [np.zeros(len(x0)), np.ones(len(x0))]
    parts_e = [np.arange(len(x0)), np.arange(len(x0))]
    for a0, da in ((x0, dx), (y0, dy)):
        lo = np.ceil(np.minimum(a0, a0 + da) - 0.5)
        hi = np.floor(np.maximum(a0, a0 + da) - 0.5)
        n = np.maximum(hi - lo + 1, 0).astype(np.int64)
        edge = np.repeat(np.arange(len(x0)), n)
        border = lo[edge] + (np.arange(len(edge)) - np.repeat(np.cumsum(n) - n, n)) + 0.5
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (border - a0[edge]) / da[edge]
        ok = np.isfinite(t)
        parts_t.append(t[ok])
        parts_e.append(edge[ok])
    t = np.concatenate(parts_t)
    edge = np.concatenate(parts_e)
    order = np.lexsort((t, edge))
    t, edge = t[order], edge[order]
    # pieces of an edge between consecutive border crossings; a piece shorter than a thousandth
    # of a pixel is the edge going through a pixel corner (up to the rounding of the contour
    # data, which DS strings keep to 16 characters): it touches those pixels at a point only
    length = np.hypot(dx, dy)[edge[1:]] * np.diff(t)
    same = (edge[1:] == edge[:-1]) & (length > 1e-3)
    mid = (t[1:] + t[:-1])[same] / 2
    e = edge[1:][same]
    # each edge's end points too (a zero-length edge still touches its pixel)
    px = np.rint(np.r_[x0[e] + mid * dx[e], x0]).astype(np.int64)
    py = np.rint(np.r_[y0[e] + mid * dy[e], y0]).astype(np.int64)
    pk = np.r_[k[e], k]
    inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    return pk[inside], py[inside], px[inside]


def rasterise(
    contours: list[NDArray[np.float64]], volume: xr.DataArray, *, boundary: str = "centre"
) -> tuple[NDArray[np.bool_], list[str]]:
    """Fill closed planar contours (LPS (n, 3) point arrays) on a volume's grid (even-odd).

    See the module docstring for the ``boundary`` rules.
    """
    if boundary not in BOUNDARY_RULES:
        raise ValueError(f"boundary must be one of {BOUNDARY_RULES}, not {boundary!r}")
    shape, _ = grid_of(volume)
    notes: list[str] = []
    mask = np.zeros(shape, dtype=bool)
    if not contours:
        return mask, notes
    pieces, slices, off_grid, tilted = _slice_of_contours(contours, volume)
    if off_grid:
        notes.append(f"{off_grid} contour(s) lie between or outside the volume's slices: skipped")
    if tilted:
        notes.append(f"{tilted} contour(s) are not parallel to the slices: projected onto them")
    if not pieces:
        return mask, notes
    x0, y0, x1, y1, k = _edges(pieces, slices)
    mask = _fill_spans(shape, x0, y0, x1, y1, k)
    if boundary == "overlap":
        pk, py, px = _edge_pixels(shape, x0, y0, x1, y1, k)
        mask[pk, py, px] = True
    return mask, notes
