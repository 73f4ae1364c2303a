"""IBSI image processing on the mask's bounding box: resampling, re-segmentation, discretisation.

Only the region around the ROI is ever read or interpolated; the new grid is still laid out
over the whole image (IBSI centre alignment), so the result equals processing the full image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from voxelhub.features.settings import Discretisation, Resampling, Resegmentation

__all__ = [
    "INTERPOLATION_SUPPORT",
    "PEAK_RADIUS_MM",
    "Region",
    "bounding_box",
    "discretise",
    "new_grid",
    "resample",
    "resegment",
]

PEAK_RADIUS_MM = 10.0 * (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
"""Radius of the 1 cm³ sphere of the local intensity peak (IBSI 3.2)."""

INTERPOLATION_SUPPORT = {0: 1, 1: 2, 3: 12}
"""Original voxels read beyond the outermost sample, per interpolation order (the cubic
B-spline prefilter is global; 12 voxels make the crop error below 1e-6 of the step)."""


@dataclass
class Region:
    """The processed ROI region: intensities and the two IBSI masks on one grid.

    ``image`` covers the ROI plus a margin (for the intensity peak sphere); the masks are on
    the same grid. ``spacing`` is ``(dz, dy, dx)`` in mm.
    """

    image: NDArray[np.float64]
    morph_mask: NDArray[np.bool_]
    int_mask: NDArray[np.bool_]
    spacing: tuple[float, float, float]
    diagnostics: dict[str, float] = field(default_factory=dict)


def bounding_box(mask: NDArray[np.bool_]) -> tuple[tuple[int, int], ...]:
    """Inclusive ``(first, last)`` index per axis of the non-zero voxels."""
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            raise ValueError("the mask is empty: no voxel is in the ROI")
        out.append((int(hit[0]), int(hit[-1])))
    return tuple(out)


def new_grid(
    n: int, spacing: float, new_spacing: float | None, alignment: str = "center"
) -> tuple[int, float, float]:
    """Size, first position and step of the new grid, in original voxel indices.

    IBSI centre alignment: ``n_new = ceil(n * s / s_new)`` and the grid centres coincide.
    """
    if new_spacing is None or new_spacing == spacing:
        return n, 0.0, 1.0
    n_new = math.ceil(n * spacing / new_spacing - 1e-9)
    step = new_spacing / spacing
    if alignment == "center":
        first = (spacing * (n - 1) - new_spacing * (n_new - 1)) / (2.0 * spacing)
    elif alignment == "corner":
        first = (step - 1.0) / 2.0
    else:
        raise ValueError(f"unknown grid alignment {alignment!r}")
    return n_new, first, step


def resample(
    image: NDArray[np.floating] | NDArray[np.integer],
    mask: NDArray[np.bool_],
    spacing: tuple[float, float, float],
    settings: Resampling | None,
    *,
    margin_mm: float = 0.0,
    full_shape: tuple[int, int, int] | None = None,
    offset: tuple[int, int, int] = (0, 0, 0),
) -> tuple[NDArray[np.float64], NDArray[np.bool_], tuple[float, float, float]]:
    """Resample the image and the mask onto the new grid, only around the ROI.

    Parameters
    ----------
    image, mask
        A crop of the full image, starting at voxel ``offset`` of an image of ``full_shape``
        (default: the crop is the whole image). It must reach ``margin_mm`` plus the
        interpolation support beyond the ROI where the full image allows.
    spacing
        Original ``(dz, dy, dx)`` in mm.
    settings
        ``None`` keeps the grid (then this only crops).
    margin_mm
        Keep this much image around the ROI bounding box (for the intensity peak sphere).

    Returns
    -------
    image, mask, spacing
        The resampled region cropped to the ROI bounding box plus the margin.
    """
    full = full_shape or tuple(int(s) for s in image.shape)
    bbox = bounding_box(mask)
    new_spacing = settings.spacing if settings is not None else (None, None, None)
    alignment = settings.grid_alignment if settings is not None else "center"
    coords: list[NDArray[np.float64]] = []
    read: list[tuple[int, int]] = []
    out_spacing = []
    pad = INTERPOLATION_SUPPORT[settings.order if settings is not None else 0]
    for ax in range(3):
        n_new, first, step = new_grid(full[ax], spacing[ax], new_spacing[ax], alignment)
        s_new = spacing[ax] * step
        out_spacing.append(s_new)
        lo, hi = bbox[ax][0] + offset[ax], bbox[ax][1] + offset[ax]
        extra = math.ceil(margin_mm / s_new)
        # new-grid samples that can see the ROI (linear support: one original voxel)
        j0 = max(0, math.ceil((lo - 1 - first) / step) - extra)
        j1 = min(n_new - 1, math.floor((hi + 1 - first) / step) + extra)
        pos = first + step * np.arange(j0, j1 + 1, dtype=np.float64)
        coords.append(pos - offset[ax])
        read.append((math.floor(pos[0]) - pad, math.ceil(pos[-1]) + pad))
    if settings is None:
        sl = tuple(slice(max(0, round(c[0])), round(c[-1]) + 1) for c in coords)
        return (
            np.asarray(image[sl], dtype=np.float64),
            np.asarray(mask[sl], dtype=bool),
            (spacing[0], spacing[1], spacing[2]),
        )
    # Read only what the interpolation needs, then map new-grid positions into that crop.
    sl = tuple(
        slice(max(0, a - offset[ax]), min(image.shape[ax], b - offset[ax] + 1))
        for ax, (a, b) in enumerate(read)
    )
    sub_img = np.asarray(image[sl], dtype=np.float64)
    sub_mask = np.asarray(mask[sl], dtype=np.float64)
    local = [coords[ax] - sl[ax].start for ax in range(3)]
    grid = np.meshgrid(*local, indexing="ij")
    out_img = ndimage.map_coordinates(sub_img, grid, order=settings.order, mode="nearest")
    if settings.round_intensities:
        out_img = np.round(out_img)
    out_mask = ndimage.map_coordinates(sub_mask, grid, order=settings.mask_order, mode="nearest")
    # a tiny tolerance: 0.5 from two exact halves must count as in the ROI
    return (
        out_img,
        out_mask >= settings.mask_threshold - 1e-9,
        (out_spacing[0], out_spacing[1], out_spacing[2]),
    )


def resegment(
    image: NDArray[np.float64], mask: NDArray[np.bool_], settings: Resegmentation
) -> NDArray[np.bool_]:
    """The intensity mask: the ROI without voxels outside the range or beyond n sigma."""
    out = mask.copy()
    lower, upper = settings.range
    if lower is not None:
        out &= image >= lower
    if upper is not None:
        out &= image <= upper
    if settings.outlier_sigma is not None:
        values = image[out]
        mean, std = values.mean(), values.std()
        out &= np.abs(image - mean) <= settings.outlier_sigma * std
    return out


def discretise(
    values: NDArray[np.float64],
    settings: Discretisation,
    resegmentation: Resegmentation | None = None,
) -> tuple[NDArray[np.int64], int]:
    """Grey levels 1..Ng of ``values`` (the ROI intensities) and Ng.

    Fixed bin size bins start at the lower bound (the re-segmentation minimum when set), as
    IBSI defines them, not at multiples of the bin width. For ``"none"`` the values must
    already be integers >= 1.
    """
    if settings.method == "fbn":
        n_bins = int(settings.bin_number or 0)
        vmin, vmax = float(values.min()), float(values.max())
        if vmax == vmin:
            return np.ones(values.shape, dtype=np.int64), n_bins
        levels = np.floor(n_bins * (values - vmin) / (vmax - vmin)).astype(np.int64) + 1
        return np.minimum(levels, n_bins), n_bins
    if settings.method == "fbs":
        width = float(settings.bin_width or 0.0)
        lower = settings.lower_bound
        if lower is None and resegmentation is not None:
            lower = resegmentation.range[0]
        if lower is None:
            lower = float(values.min())
        levels = np.floor((values - lower) / width).astype(np.int64) + 1
        return levels, int(levels.max())
    levels = np.asarray(np.round(values), dtype=np.int64)
    if levels.size and levels.min() < 1:
        raise ValueError("discretisation 'none' needs integer grey levels >= 1")
    return levels, int(levels.max())
