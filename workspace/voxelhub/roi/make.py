"""Make masks on dask arrays, chunk by chunk: threshold, Otsu, morphology, components.

Everything here is lazy or reads the image one chunk at a time, so a volume larger than memory
is never loaded whole.  Results equal scipy / scikit-image on the whole array:

* :func:`threshold` is element-wise.
* :func:`otsu_threshold` builds the histogram chunk by chunk (one bin per integer value for
  integer images, ``bins`` bins between the minimum and maximum otherwise, as
  :func:`skimage.filters.threshold_otsu` does) and applies Otsu's criterion to it.
* :func:`binary_erosion`, :func:`binary_dilation`, :func:`binary_opening` and
  :func:`binary_closing` run :mod:`scipy.ndimage` per chunk with a halo as deep as the operation
  reaches (``iterations`` × the structuring element's radius), with zeros beyond the image
  (scipy's ``border_value=0``); opening and closing are two such passes, as in scipy.
* :func:`connected_components`, :func:`largest_component` and
  :func:`remove_small_components` (from :mod:`voxelhub.roi.components`) label globally across
  chunk borders.

Inputs may be numpy, dask or xarray arrays; an xarray input gives an xarray result with the same
coordinates and attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from numpy.typing import NDArray
from scipy import ndimage

from voxelhub.roi.components import (
    connected_components,
    largest_component,
    remove_small_components,
    structure_for,
)

__all__ = [
    "binary_closing",
    "binary_dilation",
    "binary_erosion",
    "binary_opening",
    "connected_components",
    "largest_component",
    "otsu",
    "otsu_threshold",
    "remove_small_components",
    "threshold",
]

MAX_INTEGER_BINS = 1 << 16
"""Integer images spanning more values than this get ``bins`` equal bins instead of one each."""


def _data(image: Any) -> da.Array:
    data = image.data if isinstance(image, xr.DataArray) else image
    if isinstance(data, da.Array):
        return data
    return da.from_array(np.asarray(data), chunks=-1)


def _like(result: da.Array, image: Any, name: str, **attrs: Any) -> Any:
    if isinstance(image, xr.DataArray):
        return xr.DataArray(
            result,
            dims=image.dims,
            coords=image.coords,
            attrs={**image.attrs, **attrs},
            name=name,
        )
    return result


def threshold(image: Any, lower: float | None = None, upper: float | None = None) -> Any:
    """Mask of voxels with ``lower <= value <= upper`` (either bound may be left out); lazy."""
    if lower is None and upper is None:
        raise ValueError("give lower=, upper= or both")
    data = _data(image)
    mask = data >= lower if lower is not None else None
    if upper is not None:
        below = data <= upper
        mask = below if mask is None else mask & below
    assert mask is not None
    return _like(mask, image, "mask", threshold=[lower, upper])


def histogram(image: Any, bins: int = 256) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Counts and bin centres over the image's range, computed chunk by chunk."""
    data = _data(image)
    lo_, hi_ = dask.compute(data.min(), data.max())
    lo, hi = lo_.item(), hi_.item()
    if lo == hi:  # a constant image: one bin, at its value
        return np.array([data.size], dtype=np.int64), np.array([float(lo)])
    if data.dtype.kind in "iub" and hi - lo + 1 <= MAX_INTEGER_BINS:
        lo, hi = int(lo), int(hi)
        n = hi - lo + 1

        def count(block: NDArray[Any]) -> NDArray[np.int64]:
            values = block.astype(np.int64).ravel() - lo
            return np.bincount(values, minlength=n)[None, :]

        parts = [
            da.from_delayed(dask.delayed(count)(b), shape=(1, n), dtype=np.int64)
            for b in data.to_delayed().ravel()
        ]
        counts = np.asarray(da.concatenate(parts).sum(axis=0).compute(), dtype=np.int64)
        return counts, np.arange(lo, hi + 1, dtype=np.float64)
    # numpy's own uniform-bin histogram per chunk, its range in the image's dtype as skimage
    # passes it: bins and edges are then computed exactly as skimage's (in float32 for float32
    # images), which da.histogram's float64 edges are not (a voxel on an edge changed bins)
    first, last = lo_, hi_

    def count_floats(block: NDArray[Any]) -> NDArray[np.int64]:
        return np.histogram(block.ravel(), bins=bins, range=(first, last))[0][None, :]

    parts = [
        da.from_delayed(dask.delayed(count_floats)(b), shape=(1, bins), dtype=np.int64)
        for b in data.to_delayed().ravel()
    ]
    counts = np.asarray(da.concatenate(parts).sum(axis=0).compute(), dtype=np.int64)
    edges = np.histogram(np.empty(0, dtype=data.dtype), bins=bins, range=(first, last))[1]
    return counts, (edges[:-1] + edges[1:]) / 2


def otsu_threshold(image: Any, bins: int = 256) -> float:
    """Otsu's threshold (as :func:`skimage.filters.threshold_otsu`), read chunk by chunk.

    Voxels above the threshold are the foreground.
    """
    counts, centres = histogram(image, bins)
    if np.count_nonzero(counts) <= 1:
        return float(centres[np.flatnonzero(counts)[0]]) if counts.any() else float("nan")
    # skimage's arithmetic in skimage's types (counts as float32, centres in the image's float
    # type): two bins' variances can be that close, and a rounding apart picks the other one
    counts_f = counts.astype(np.float32)
    weight1 = np.cumsum(counts_f)
    weight2 = np.cumsum(counts_f[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean1 = np.cumsum(counts_f * centres) / weight1
        mean2 = (np.cumsum((counts_f * centres)[::-1]) / weight2[::-1])[::-1]
    variance = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centres[int(np.argmax(variance))])


def otsu(image: Any, bins: int = 256) -> Any:
    """Mask of voxels above Otsu's threshold (the threshold is in ``attrs`` for xarray)."""
    t = otsu_threshold(image, bins)
    return _like(_data(image) > t, image, "mask", threshold=[t, None])


def _depth(structure: NDArray[np.bool_], iterations: int) -> tuple[int, ...]:
    return tuple(iterations * (n // 2) for n in structure.shape)


def _morph(
    op: Callable[..., NDArray[np.bool_]],
    mask: Any,
    structure: NDArray[np.bool_] | None,
    iterations: int,
) -> Any:
    data = _data(mask).astype(bool)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    se = structure_for(data.ndim, 1) if structure is None else np.asarray(structure, dtype=bool)
    depth = list(_depth(se, iterations))
    for axis, n in enumerate(data.shape):
        if depth[axis] >= n:  # the halo would span the axis: one chunk along it, no halo
            data = data.rechunk({axis: -1})
            depth[axis] = 0
    out = data.map_overlap(
        lambda b: op(b, structure=se, iterations=iterations, border_value=0),
        depth=tuple(depth),
        boundary=False,
        dtype=bool,
        meta=np.empty((0,) * data.ndim, dtype=bool),
    )
    return out


def binary_erosion(
    mask: Any, structure: NDArray[np.bool_] | None = None, iterations: int = 1
) -> Any:
    """:func:`scipy.ndimage.binary_erosion` chunk by chunk (zeros beyond the image)."""
    return _like(_morph(ndimage.binary_erosion, mask, structure, iterations), mask, "mask")


def binary_dilation(
    mask: Any, structure: NDArray[np.bool_] | None = None, iterations: int = 1
) -> Any:
    """:func:`scipy.ndimage.binary_dilation` chunk by chunk (zeros beyond the image)."""
    return _like(_morph(ndimage.binary_dilation, mask, structure, iterations), mask, "mask")


def binary_opening(
    mask: Any, structure: NDArray[np.bool_] | None = None, iterations: int = 1
) -> Any:
    """Erosion then dilation, as :func:`scipy.ndimage.binary_opening`; removes small specks."""
    eroded = _morph(ndimage.binary_erosion, mask, structure, iterations)
    return _like(_morph(ndimage.binary_dilation, eroded, structure, iterations), mask, "mask")


def binary_closing(
    mask: Any, structure: NDArray[np.bool_] | None = None, iterations: int = 1
) -> Any:
    """Dilation then erosion, as :func:`scipy.ndimage.binary_closing`; fills small gaps.

    Like scipy, the erosion treats voxels beyond the image as background, so structures
    touching the image border may lose their border layer.
    """
    dilated = _morph(ndimage.binary_dilation, mask, structure, iterations)
    return _like(_morph(ndimage.binary_erosion, dilated, structure, iterations), mask, "mask")
