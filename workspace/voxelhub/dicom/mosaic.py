"""Mosaics: one 2-D DICOM image that holds a whole volume as a grid of tiles (Siemens, UIH).

United Imaging's "VFRAME" images are mosaics too: the slice count is in the private (0065,1050)
and each tile's own ImagePositionPatient in the items of the private sequence (0065,1051), in
tile order; the tiles have the acquisition matrix's size and fill the image row by row.

Siemens stores EPI/DTI volumes as one large image (e.g. 384×384) tiled with the slices
(e.g. 6×6 tiles of 64×64, of which the first 35 are slices, row-major, the rest padding).  The
slice count is only in the Siemens CSA private header (0029,1010), ``NumberOfImagesInMosaic``;
the grid is ``ceil(sqrt(n_slices))`` tiles across.

Geometry, as nibabel (``MosaicWrapper``) and dcm2niix build it:

* ImagePositionPatient of a mosaic is the corner of the *whole mosaic* as if it were one slice
  of ``Rows × Columns`` pixels centred like a tile; the first tile's corner voxel is at
  ``IPP + col_cos·dr·(Rows − tile_rows)/2 + row_cos·dc·(Columns − tile_columns)/2``;
* tile ``k`` lies at ``first + k · Δ · n`` where ``n`` is the CSA ``SliceNormalVector`` (the
  direction tiles advance in; it may be opposite to row × column, e.g. sagittal acquisitions)
  and ``Δ`` is SpacingBetweenSlices (SliceThickness if absent).

These per-tile positions go through :func:`voxelhub.dicom.geometry.compute_geometry`, so slice
ordering, spacing and flags have one implementation.  ``compute_geometry`` sorts along
row × column; when the tiles advance the other way its ``order`` is the reversed tile order.

**Ordering contract** (what the writer must do): ``plan.geometry.order[k]`` is the *tile index*
of the slice at z index ``k``, so the volume in spatial (affine) order is
``demosaic(image, plan.mosaic)[plan.geometry.order]`` — :func:`voxelhub.dicom.slabs.read_slab`
does exactly that, slice by slice.  ``plan.geometry.positions[k]`` is the position of tile
``order[k]``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from voxelhub.dicom.geometry import Flag, compute_geometry
from voxelhub.dicom.index import Frame, open_source
from voxelhub.errors import DicomError, GeometryError

with warnings.catch_warnings():
    # nibabel.nicom warns on import that its DICOM *readers* are experimental; only the CSA
    # header parser is used here.
    warnings.simplefilter("ignore", UserWarning)
    from nibabel.nicom import csareader

if TYPE_CHECKING:
    from voxelhub.dicom.series import VolumePlan

CSA_TAG = "(0029,1010)"
"""Siemens CSA image header (private creator "SIEMENS CSA HEADER", element xx10)."""


@dataclass(frozen=True)
class MosaicLayout:
    """How the slices of one volume are tiled in a Siemens mosaic image."""

    tile_rows: int
    """Rows of one slice (e.g. 64)."""
    tile_columns: int
    """Columns of one slice."""
    tiles_per_row: int
    """Tiles across (and down) the mosaic: ``ceil(sqrt(n_slices))``."""
    n_slices: int
    """Slices in the mosaic, from the CSA header's NumberOfImagesInMosaic (UIH: (0065,1050))."""
    tiles_per_column: int = 0
    """Tiles down the mosaic; 0 means square (``tiles_per_row``), as Siemens lays them out."""

    @property
    def tiles_down(self) -> int:
        return self.tiles_per_column or self.tiles_per_row


UIH_SLICES = (0x0065, 0x1050)
UIH_SLICE_SEQUENCE = (0x0065, 0x1051)


@dataclass(frozen=True)
class _MosaicHeader:
    layout: MosaicLayout
    slice_normal: np.ndarray | None  # CSA SliceNormalVector, unit length, or None if absent
    tile_positions: list[tuple[float, float, float]] | None = None  # UIH: each tile's own IPP


def _read_header(source: str, vendor: str | None = "siemens") -> _MosaicHeader:
    if vendor == "uih":
        return _read_uih_header(source)
    try:
        with open_source(source) as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
    except (OSError, EOFError, ValueError, KeyError, TypeError, InvalidDicomError) as exc:
        raise DicomError(
            f"Siemens mosaic: cannot read the DICOM header: {exc}", path=source
        ) from exc
    try:
        csa = csareader.get_csa_header(ds, "image")
    except Exception as exc:  # CSAReadError, struct/Unicode errors on a damaged header
        raise DicomError(
            f"Siemens mosaic: the CSA image header is unreadable ({type(exc).__name__}: {exc})",
            path=source,
            tag=CSA_TAG,
        ) from exc
    if csa is None:
        raise DicomError(
            "Siemens mosaic: no Siemens CSA image header, so the number of slices in the mosaic "
            "is unknown (not a Siemens mosaic, or the private tags were removed by an anonymiser)",
            path=source,
            tag=CSA_TAG,
        )
    try:
        n_raw = csareader.get_n_mosaic(csa)
        n_slices = int(n_raw) if n_raw is not None else 0
    except (TypeError, ValueError):
        n_slices = 0
    if n_slices <= 0:
        raise DicomError(
            "Siemens mosaic: the CSA header has no valid NumberOfImagesInMosaic "
            f"({n_raw!r}); the image is not a mosaic or the header is damaged",
            path=source,
            tag=CSA_TAG,
        )
    tiles = math.ceil(math.sqrt(n_slices))
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or columns <= 0 or rows % tiles or columns % tiles:
        raise DicomError(
            f"Siemens mosaic: a {rows}×{columns} image cannot hold {n_slices} slices on a "
            f"{tiles}×{tiles} grid of equal tiles",
            path=source,
            tag=CSA_TAG,
        )
    normal: np.ndarray | None
    try:
        raw_normal = csareader.get_slice_normal(csa)
        normal = None if raw_normal is None else np.asarray(raw_normal, dtype=float)
    except (TypeError, ValueError):
        normal = None
    if normal is not None:
        length = float(np.linalg.norm(normal))
        normal = normal / length if np.isfinite(length) and length > 0.5 else None
    layout = MosaicLayout(rows // tiles, columns // tiles, tiles, n_slices)
    return _MosaicHeader(layout, normal)


def _read_uih_header(source: str) -> _MosaicHeader:
    """A UIH VFRAME mosaic: slice count (0065,1050), tile positions from (0065,1051) items."""
    try:
        with open_source(source) as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
        n_slices = int(ds[UIH_SLICES].value)
        items = ds[UIH_SLICE_SEQUENCE].value
        positions = [
            (
                float(i.ImagePositionPatient[0]),
                float(i.ImagePositionPatient[1]),
                float(i.ImagePositionPatient[2]),
            )
            for i in items
        ]
        rows, columns = int(ds.Rows), int(ds.Columns)
        matrix = [int(v) for v in (ds.get("AcquisitionMatrix") or ())]
    except Exception as exc:
        raise DicomError(
            f"UIH mosaic: the slice count or per-slice positions are unreadable "
            f"({type(exc).__name__}: {exc})",
            path=source,
            tag="(0065,1051)",
        ) from exc
    if n_slices <= 0 or len(positions) != n_slices:
        raise DicomError(
            f"UIH mosaic: (0065,1050) says {n_slices} slices but (0065,1051) has "
            f"{len(positions)} positions",
            path=source,
            tag="(0065,1051)",
        )
    layout = _uih_layout(rows, columns, n_slices, matrix)
    if layout is None:
        raise DicomError(
            f"UIH mosaic: a {rows}×{columns} image cannot hold {n_slices} tiles of the "
            f"acquisition matrix {matrix}",
            path=source,
            tag="(0018,1310)",
        )
    return _MosaicHeader(layout, None, positions)


def _uih_layout(rows: int, columns: int, n: int, matrix: list[int]) -> MosaicLayout | None:
    """Tiles of the acquisition matrix's size, row by row, enough for ``n`` slices."""
    if len(matrix) != 4:
        return None
    freq, phase = max(matrix[0], matrix[1]), max(matrix[2], matrix[3])
    for tile_rows, tile_columns in ((freq, phase), (phase, freq)):
        if tile_rows <= 0 or tile_columns <= 0 or rows % tile_rows or columns % tile_columns:
            continue
        down, across = rows // tile_rows, columns // tile_columns
        if down * across >= n:
            return MosaicLayout(tile_rows, tile_columns, across, n, down)
    return None


def read_layout(source: str) -> MosaicLayout:
    """The tiling of the mosaic in ``source`` (a path or ``archive.zip!/member``).

    Reads the header only (private tags included).  Raises :class:`DicomError` naming the CSA
    tag (0029,1010) when the CSA header or its slice count cannot be read, or the image size
    does not fit the tile grid.
    """
    return _read_header(source).layout


def demosaic(image: np.ndarray, layout: MosaicLayout) -> np.ndarray:
    """Cut a mosaic image into its slices: ``(n_slices, tile_rows, tile_columns)``.

    Slice ``k`` is tile ``k`` in row-major tile order (the acquisition/tile order, *not*
    necessarily spatial order; index with ``geometry.order`` for that).  Returns a view where
    numpy can, so it costs no copy.
    """
    t, d = layout.tiles_per_row, layout.tiles_down
    tr, tc = layout.tile_rows, layout.tile_columns
    if image.ndim != 2 or image.shape != (d * tr, t * tc):
        raise ValueError(
            f"mosaic image of shape {image.shape} does not match a {d}×{t} grid of {tr}×{tc} tiles"
        )
    if not 0 < layout.n_slices <= t * d:
        raise ValueError(f"{layout.n_slices} slices do not fit a {d}×{t} grid")
    # (tile_row, row, tile_col, col) → (tile_row, tile_col, row, col) → (tile, row, col)
    tiles = image.reshape(d, tr, t, tc).transpose(0, 2, 1, 3).reshape(d * t, tr, tc)
    return tiles[: layout.n_slices]


def _tile_positions(frame: Frame, header: _MosaicHeader) -> list[tuple[float, float, float]] | None:
    """LPS position of the first voxel of every tile, in tile order (None without geometry)."""
    if header.tile_positions is not None:
        return header.tile_positions
    if frame.image_position is None or frame.image_orientation is None:
        return None
    layout = header.layout
    row_cos = np.asarray(frame.image_orientation[:3], dtype=float)
    col_cos = np.asarray(frame.image_orientation[3:6], dtype=float)
    dr, dc = frame.pixel_spacing if frame.pixel_spacing else (1.0, 1.0)
    first = (
        np.asarray(frame.image_position, dtype=float)
        + col_cos * dr * (frame.rows - layout.tile_rows) / 2.0
        + row_cos * dc * (frame.columns - layout.tile_columns) / 2.0
    )
    normal = header.slice_normal
    if normal is None:
        cross = np.cross(row_cos, col_cos)
        normal = cross / np.linalg.norm(cross)
    # a distance: the direction is the normal's. A negative SpacingBetweenSlices (some writers)
    # used as a step would lay the tiles out mirrored along the normal, silently
    step = abs(float(frame.slice_spacing or 1.0))
    out = []
    for k in range(layout.n_slices):
        x, y, z = (float(v) for v in first + k * step * normal)
        out.append((x, y, z))
    return out


def _acquisition_labels(frames: list[Frame]) -> list[int]:
    numbers = [f.acquisition_number for f in frames]
    if None not in numbers and len(set(numbers)) == len(numbers):
        return [int(n) for n in numbers if n is not None]
    return list(range(1, len(frames) + 1))


def plan_mosaic(
    study_uid: str, series_uid: str, split: dict[str, Any], frames: list[Frame]
) -> list[VolumePlan]:
    """Every mosaic file is a whole 3-D volume; several make one 4-D volume.

    Files are ordered by AcquisitionNumber, then InstanceNumber.  When they share the tiling
    and every tile position, they become one 4-D volume (an fMRI or DTI series) whose t axis
    follows that order; otherwise each file is its own 3-D volume and ``split`` gains
    ``{"acquisition": n}`` (AcquisitionNumber when present and distinct, else the position).
    Each plan's geometry is that of the de-mosaicked volume (``n_slices`` along z); see the
    module docstring for how ``geometry.order`` maps z indices to tiles.
    """
    from voxelhub.dicom.series import VolumePlan, timepoints_of

    frames = sorted(
        frames,
        key=lambda f: (
            f.acquisition_number is None,
            f.acquisition_number or 0,
            f.instance_number is None,
            f.instance_number or 0,
            f.source,
            f.sop_instance_uid,
        ),
    )
    planned = []
    for frame in frames:
        try:
            header = _read_header(frame.source, frame.mosaic_vendor)
        except DicomError as exc:
            raise GeometryError(str(exc)) from exc
        layout = header.layout
        positions = _tile_positions(frame, header)
        geometry = compute_geometry(
            positions if positions is not None else [None] * layout.n_slices,
            frame.image_orientation,
            frame.pixel_spacing,
            fallback_slice_spacing=frame.slice_spacing,
            gantry_tilt=frame.gantry_tilt,
        )
        if sorted(geometry.order) != list(range(layout.n_slices)):  # pragma: no cover - invariant
            raise GeometryError(f"mosaic slice order {geometry.order} is not a permutation")
        if frame.slice_spacing is None and layout.n_slices > 1 and header.tile_positions is None:
            geometry.flags.append(
                Flag(
                    "no_slice_spacing",
                    "Siemens mosaic without SpacingBetweenSlices or SliceThickness: the tiles' "
                    "positions assume 1 mm between slices",
                )
            )
        if frame.slice_spacing is not None and frame.slice_spacing < 0 and positions:
            geometry.flags.append(
                Flag(
                    "negative_slice_spacing",
                    f"the mosaic's slice spacing is negative ({frame.slice_spacing:g} mm): used "
                    "as a distance, tiles laid out along the CSA slice normal. dcm2niix ignores a "
                    "non-positive SpacingBetweenSlices and steps by SliceThickness instead",
                )
            )
        if frame.mosaic_vendor == "uih":
            geometry.flags.append(
                Flag(
                    "uih_mosaic",
                    f"United Imaging mosaic (VFRAME): {layout.n_slices} slices cut from a "
                    f"{layout.tiles_down}×{layout.tiles_per_row} grid of tiles, each placed at its "
                    "own position from the private (0065,1051) sequence",
                )
            )
        planned.append((frame, layout, positions, geometry))
    first_frame, first_layout, first_positions, first_geometry = planned[0]
    same_grid = all(
        layout == first_layout
        and positions is not None
        and first_positions is not None
        and np.allclose(np.asarray(positions), np.asarray(first_positions), atol=1e-3)
        for _, layout, positions, _ in planned[1:]
    )
    if len(planned) > 1 and same_grid:
        diffusion = first_frame.diffusion
        if diffusion is not None and diffusion.source.startswith("UIH"):
            first_geometry.flags.append(
                Flag(
                    "uih_gradient_frame",
                    "UIH diffusion directions (0065,1037) are read in patient axes: the scanner's "
                    "own gradient table equals them rotated into the image axes; dcm2niix reads "
                    "them as image axes, so its .bvec differs from ours by the slices' obliquity",
                )
            )
        return [
            VolumePlan(
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                patient_id=first_frame.patient_id,
                modality=first_frame.modality,
                series_number=first_frame.series_number,
                frames=[p[0] for p in planned],
                geometry=first_geometry,
                split=dict(split),
                mosaic=first_layout,
                timepoints=timepoints_of([[p[0]] for p in planned], first_geometry),
            )
        ]
    labels = _acquisition_labels(frames)
    return [
        VolumePlan(
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            patient_id=frame.patient_id,
            modality=frame.modality,
            series_number=frame.series_number,
            frames=[frame],
            geometry=geometry,
            split={**split, "acquisition": label} if len(frames) > 1 else dict(split),
            mosaic=layout,
        )
        for (frame, layout, _, geometry), label in zip(planned, labels, strict=True)
    ]
