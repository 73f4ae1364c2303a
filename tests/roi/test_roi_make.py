"""Masks made chunk by chunk on dask equal scipy / scikit-image on the whole array."""

from __future__ import annotations

import threading
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.filters import threshold_otsu

from voxelhub.roi import make


@st.composite
def mask_and_chunks(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, ...]]:
    shape = draw(st.tuples(*(st.integers(1, 9) for _ in range(3))))
    density = draw(st.sampled_from([0.2, 0.5, 0.8]))
    seed = draw(st.integers(0, 2**32 - 1))
    mask = np.random.default_rng(seed).random(shape) < density
    chunks = draw(st.tuples(*(st.integers(1, n) for n in shape)))
    return mask, chunks


@settings(max_examples=60, deadline=None)
@given(mask_and_chunks(), st.integers(1, 3))
def test_components_equal_scipy_label_for_label(case, connectivity: int) -> None:
    mask, chunks = case
    structure = ndimage.generate_binary_structure(3, connectivity)
    expected, n = ndimage.label(mask, structure=structure)
    labels, count = make.connected_components(da.from_array(mask, chunks=chunks), connectivity)
    assert count == n
    np.testing.assert_array_equal(labels.compute(), expected)


@settings(max_examples=40, deadline=None)
@given(mask_and_chunks(), st.integers(1, 3))
def test_largest_and_small_components_equal_the_whole_array(case, connectivity: int) -> None:
    mask, chunks = case
    structure = ndimage.generate_binary_structure(3, connectivity)
    expected, n = ndimage.label(mask, structure=structure)
    sizes = np.bincount(expected.ravel(), minlength=n + 1)
    chunked = da.from_array(mask, chunks=chunks)
    largest = make.largest_component(chunked, connectivity).compute()
    if n == 0:
        assert not largest.any()
    else:
        np.testing.assert_array_equal(largest, expected == np.argmax(sizes[1:]) + 1)
    kept = make.remove_small_components(chunked, 3, connectivity).compute()
    np.testing.assert_array_equal(kept, np.isin(expected, np.flatnonzero(sizes >= 3)) & mask)


@settings(max_examples=40, deadline=None)
@given(mask_and_chunks(), st.integers(1, 3), st.integers(1, 2))
def test_morphology_equals_scipy(case, connectivity: int, iterations: int) -> None:
    mask, chunks = case
    se = ndimage.generate_binary_structure(3, connectivity)
    chunked = da.from_array(mask, chunks=chunks)
    for ours, theirs in [
        (make.binary_erosion, ndimage.binary_erosion),
        (make.binary_dilation, ndimage.binary_dilation),
        (make.binary_opening, ndimage.binary_opening),
        (make.binary_closing, ndimage.binary_closing),
    ]:
        got = ours(chunked, se, iterations).compute()
        np.testing.assert_array_equal(got, theirs(mask, se, iterations), err_msg=ours.__name__)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([np.int16, np.uint8, np.float32, np.float64]),
    st.sampled_from([(7, 9, 11), (3, 5, 4), (1, 9, 2)]),
)
# two bins within a float32 rounding of each other: found by hypothesis in a full run
@example(4115, np.float32, (7, 9, 11))
def test_otsu_equals_skimage(seed: int, dtype: Any, chunks: tuple[int, ...]) -> None:
    rng = np.random.default_rng(seed)
    image = np.concatenate(
        [rng.normal(20, 5, size=(8, 9, 11)), rng.normal(90, 15, size=(6, 9, 11))]
    )
    if np.dtype(dtype).kind in "iu":
        image = np.clip(image, 0, 255)
    image = image.astype(dtype)
    t = make.otsu_threshold(da.from_array(image, chunks=chunks))
    assert t == pytest.approx(float(threshold_otsu(image)), rel=1e-6)
    np.testing.assert_array_equal(make.otsu(image).compute(), image > t)


def test_otsu_of_a_constant_image_is_its_value() -> None:
    image = np.full((3, 4, 5), 7.25, dtype=np.float32)
    assert make.otsu_threshold(da.from_array(image, chunks=2)) == float(threshold_otsu(image))


def test_threshold_and_xarray_keep_coordinates() -> None:
    values = np.arange(24.0).reshape(2, 3, 4)
    image = xr.DataArray(
        values,
        dims=("z", "y", "x"),
        coords={"z": [0.0, 2.5], "y": [0, 1, 2], "x": [0, 1, 2, 3]},
        attrs={"spacing_zyx": [2.5, 1.0, 1.0]},
    )
    mask = make.threshold(image, lower=5, upper=10)
    assert mask.attrs["spacing_zyx"] == [2.5, 1.0, 1.0]
    np.testing.assert_array_equal(mask.values, (values >= 5) & (values <= 10))
    xr.testing.assert_equal(mask.z, image.z)
    np.testing.assert_array_equal(make.threshold(values, upper=3).compute(), values <= 3)
    with pytest.raises(ValueError, match="lower="):
        make.threshold(values)


class _Largest(Callback):
    """Records the largest array any task produced."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
        self.largest = max(self.largest, int(getattr(result, "nbytes", 0)))


def test_large_volume_is_read_chunk_by_chunk() -> None:
    """A 256 MB volume made on the fly: each chunk is made once per pass, never all at once."""
    shape, chunks = (256, 512, 512), (32, 256, 256)
    reads: list[tuple[int, ...]] = []
    lock = threading.Lock()

    def make_chunk(block_info: dict[Any, Any] | None = None) -> np.ndarray:
        assert block_info is not None
        loc = tuple(block_info[None]["chunk-location"])
        with lock:
            reads.append(loc)
        z0 = block_info[None]["array-location"][0][0]
        rng = np.random.default_rng(hash(loc) % 2**32)
        block = rng.normal(0, 10, size=block_info[None]["chunk-shape"]).astype(np.float32)
        block[:, 100:200, 100:200] += 500 if z0 < 128 else 0
        return block

    image = da.map_blocks(
        make_chunk,
        chunks=da.core.normalize_chunks(chunks, shape),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32),
    )
    assert image.shape == shape
    chunk_bytes = int(np.prod(chunks)) * 4
    n_chunks = int(np.prod(image.numblocks))

    with _Largest() as probe, dask.config.set(scheduler="threads"):
        count = int(make.threshold(image, lower=250).sum().compute())
    assert sorted(reads) == sorted(np.ndindex(*image.numblocks))  # each chunk once
    assert probe.largest <= chunk_bytes
    assert count == 128 * 4 * 100 * 100  # a bright square in each in-plane chunk, upper half

    reads.clear()
    with _Largest() as probe, dask.config.set(scheduler="threads"):
        t = make.otsu_threshold(image)
    assert 0 < t < 500
    assert len(reads) == 2 * n_chunks  # min/max, then the histogram
    assert probe.largest <= chunk_bytes
