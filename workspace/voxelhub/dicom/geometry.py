"""Volume geometry from slice headers: order, spacing, affine and what is wrong with them.

Geometry is sacred: slices are ordered by ImagePositionPatient projected on the slice normal
(never by file name or InstanceNumber), the slice spacing comes from those positions (never from
SliceThickness), and the affine's third column is the real step between slice positions.  With
gantry tilt that step is not parallel to the normal, so the affine is non-orthogonal, as dcm2niix
builds it (ITK instead forces the normal and shears the volume).  Non-uniform spacing and missing
slices are *reported* with a human-readable reason and the real per-slice positions kept; nothing
is resampled.

Index order is (x = column, y = row, z = slice), patient coordinates are DICOM LPS millimetres.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxelhub.errors import GeometryError

TILT_TOLERANCE_DEG = 0.05
"""A stack direction further than this from the slice normal is reported as gantry tilt."""


def spacing_tolerance(spacing: float) -> float:
    """Largest deviation (mm) between slice steps that still counts as uniform spacing."""
    return 0.01 + 0.005 * abs(spacing)


@dataclass(frozen=True)
class Flag:
    """Something about a volume's geometry a user must know, with a sentence saying why."""

    code: str
    reason: str


@dataclass
class Geometry:
    """Where every voxel of a volume is, in LPS millimetres.

    Attributes
    ----------
    order
        Permutation that sorts the input slices along the slice normal.
    origin
        LPS position of voxel (0, 0, 0).
    direction
        3×3 matrix whose columns are the unit x, y, z index directions (non-orthogonal with tilt).
    spacing
        (dz, dy, dx) in mm: dz is the mean step for uniform stacks, the median otherwise.
    slice_offsets
        Position of each sorted slice along the slice normal, relative to the first slice (mm).
    positions
        ImagePositionPatient of each sorted slice (LPS mm).
    flags
        Tilt, non-uniform spacing, missing slices, missing geometry; empty for a clean volume.
    """

    order: list[int]
    origin: np.ndarray
    direction: np.ndarray
    spacing: tuple[float, float, float]
    slice_offsets: np.ndarray
    positions: np.ndarray
    flags: list[Flag] = field(default_factory=list)
    tilt_degrees: float = 0.0

    @property
    def affine(self) -> np.ndarray:
        """4×4 matrix mapping (x, y, z, 1) voxel indices to LPS millimetres."""
        a = np.eye(4)
        dz, dy, dx = self.spacing
        a[:3, :3] = self.direction * np.array([dx, dy, dz])
        a[:3, 3] = self.origin
        return a

    @property
    def is_uniform(self) -> bool:
        return not any(f.code in ("non_uniform_spacing", "missing_slices") for f in self.flags)

    @property
    def is_orthogonal(self) -> bool:
        d = self.direction
        return bool(np.allclose(d.T @ d, np.eye(3), atol=1e-4))

    def flag_codes(self) -> list[str]:
        return [f.code for f in self.flags]

    def to_attrs(self) -> dict[str, Any]:
        """JSON-ready geometry for the store's attributes and the catalog."""
        out: dict[str, Any] = {
            "affine_lps": self.affine.round(9).tolist(),
            "origin_lps": self.origin.round(9).tolist(),
            "direction_lps": self.direction.round(9).tolist(),
            "spacing_zyx": [round(s, 9) for s in self.spacing],
            "flags": [{"code": f.code, "reason": f.reason} for f in self.flags],
            "tilt_degrees": round(self.tilt_degrees, 4),
        }
        if not self.is_uniform:
            out["slice_positions_lps"] = self.positions.round(6).tolist()
            out["slice_offsets_mm"] = self.slice_offsets.round(6).tolist()
        return out


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if n == 0:
        raise GeometryError("zero-length direction vector in ImageOrientationPatient")
    return v / n


def compute_geometry(
    positions: Sequence[Sequence[float] | None],
    orientation: Sequence[float] | None,
    pixel_spacing: Sequence[float] | None,
    *,
    fallback_slice_spacing: float | None = None,
    gantry_tilt: float | None = None,
) -> Geometry:
    """Order slices along their normal and build the volume's geometry.

    Parameters
    ----------
    positions
        ImagePositionPatient of each slice, in input order (None where missing).
    orientation
        The (shared) ImageOrientationPatient: row cosine then column cosine.
    pixel_spacing
        DICOM PixelSpacing: (distance between rows, distance between columns) in mm.
    fallback_slice_spacing
        Used only for a single slice (SpacingBetweenSlices or SliceThickness).
    gantry_tilt
        GantryDetectorTilt in degrees, quoted in the tilt flag's reason when present.
    """
    n = len(positions)
    flags: list[Flag] = []
    if fallback_slice_spacing is not None:  # a distance; a negative one would mirror the axis
        fallback_slice_spacing = abs(fallback_slice_spacing)
    dy, dx = (float(pixel_spacing[0]), float(pixel_spacing[1])) if pixel_spacing else (1.0, 1.0)
    if not pixel_spacing:
        flags.append(Flag("no_pixel_spacing", "PixelSpacing is missing; 1 mm assumed in-plane"))
    if orientation is None or any(p is None for p in positions):
        flags.append(
            Flag(
                "no_geometry",
                "ImagePositionPatient/ImageOrientationPatient missing: slices kept in dimension-"
                "index or file order and the geometry is nominal (identity direction)",
            )
        )
        dz = float(fallback_slice_spacing or 1.0)
        return Geometry(
            order=list(range(n)),
            origin=np.zeros(3),
            direction=np.eye(3),
            spacing=(dz, dy, dx),
            slice_offsets=np.arange(n) * dz,
            positions=np.zeros((n, 3)),
            flags=flags,
        )
    row = _unit(np.asarray(orientation[:3], dtype=float))
    col = _unit(np.asarray(orientation[3:6], dtype=float))
    normal = _unit(np.cross(row, col))
    pos = np.asarray(positions, dtype=float)
    proj = pos @ normal
    order = [int(i) for i in np.argsort(proj, kind="stable")]
    pos = pos[order]
    proj = proj[order]
    offsets = proj - proj[0]
    if n == 1:
        dz = float(fallback_slice_spacing or 1.0)
        return Geometry(
            order, pos[0], np.column_stack([row, col, normal]), (dz, dy, dx), offsets, pos, flags
        )
    steps = np.diff(proj)
    if np.any(steps < spacing_tolerance(0.0)):
        dup = int(np.sum(steps < spacing_tolerance(0.0)))
        raise GeometryError(
            f"{dup} slice position(s) occur more than once; the series holds several volumes "
            "that could not be told apart (echo, acquisition, temporal position all equal)"
        )
    median = float(np.median(steps))
    tol = spacing_tolerance(median)
    uniform = bool(np.all(np.abs(steps - median) <= tol))
    stack = pos[-1] - pos[0]
    stack_unit = _unit(stack)
    tilt = float(np.degrees(np.arccos(min(1.0, abs(float(stack_unit @ normal))))))
    if uniform:
        dz_normal = float(offsets[-1] / (n - 1))
    else:
        multiples = steps / median
        if np.all(np.abs(multiples - np.round(multiples)) * median <= tol):
            missing = int(np.sum(np.round(multiples)) - len(steps))
            where = [round(float(offsets[i]), 3) for i in np.nonzero(np.round(multiples) > 1)[0]]
            flags.append(
                Flag(
                    "missing_slices",
                    f"{missing} slice(s) missing: gaps after offsets {where} mm on a "
                    f"{median:.4g} mm grid; real positions kept, nothing interpolated",
                )
            )
        else:
            distinct = sorted({round(float(s), 3) for s in steps})
            flags.append(
                Flag(
                    "non_uniform_spacing",
                    f"slice spacing varies along the normal ({', '.join(map(str, distinct[:6]))}"
                    f"{' …' if len(distinct) > 6 else ''} mm); real positions kept as the z "
                    f"coordinate, nominal spacing {median:.4g} mm is the median",
                )
            )
        dz_normal = median
    if tilt > TILT_TOLERANCE_DEG:
        quoted = f" (GantryDetectorTilt {gantry_tilt:g}°)" if gantry_tilt else ""
        flags.append(
            Flag(
                "gantry_tilt",
                f"slices are stacked {tilt:.2f}° off their normal{quoted}: the affine is "
                "non-orthogonal (sheared); resample explicitly if a tool needs an orthogonal grid",
            )
        )
        # the real step between positions, as dcm2niix builds it
        dz = dz_normal / abs(float(stack_unit @ normal))
        direction = np.column_stack([row, col, stack_unit if stack @ normal > 0 else -stack_unit])
    else:
        tilt = 0.0 if tilt <= TILT_TOLERANCE_DEG else tilt
        dz = dz_normal
        direction = np.column_stack([row, col, normal])
    return Geometry(order, pos[0], direction, (float(dz), dy, dx), offsets, pos, flags, tilt)
