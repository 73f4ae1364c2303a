"""Thumbnails from the smallest stored level: the slice asked for, the window stored with it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import voxelhub
from tests.dicom_factory import write_series
from voxelhub.store.thumbnail import png_bytes, thumbnail, thumbnail_png, window


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("thumbs")
    write_series(root / "ct", slices=10, rows=150, columns=140, seed=3)
    write_series(root / "mr", slices=6, rows=40, columns=30, modality="MR", intercept=0, seed=4)
    for name in ("ct", "mr"):
        report = voxelhub.ingest(root / name, root / "store", progress=False)
        assert not report.failed
    return root / "store"


def _decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "L"
    return np.asarray(image)


def test_png_bytes_decode_to_the_same_pixels() -> None:
    arr = (np.arange(35, dtype=np.uint8) * 7).reshape(5, 7)
    np.testing.assert_array_equal(_decode(png_bytes(arr)), arr)


def test_a_ct_slice_from_the_smallest_level_in_the_stored_window(stores: Path) -> None:
    cat = voxelhub.open_catalog(stores)
    uid = cat.series(modality="CT").iloc[0]["volume_uid"]
    stored = cat.stored_volume(uid)
    assert len(stored.levels) > 1, "the test needs a pyramid"
    smallest = stored.levels[-1]
    data = np.asarray(stored.open(len(stored.levels) - 1)).astype(np.float64)
    centre, width = 40.0, 400.0  # the CT 'abdomen' preset stored with the volume
    assert window(data, stored.open(0).attrs["window_presets"]) == (centre, width)

    def expected(plane: np.ndarray) -> np.ndarray:
        grey = np.clip((plane - (centre - width / 2)) / width * 255, 0, 255)
        return grey.astype(np.uint8)

    for axis, dim in (("z", 0), ("y", 1), ("x", 2)):
        full = stored.shape[dim]
        for index in (0, full // 3, full - 1):
            got = _decode(thumbnail_png(stored, index, axis))
            k = min(index // smallest.factor[dim], smallest.shape[dim] - 1)
            np.testing.assert_array_equal(got, expected(np.take(data, k, axis=dim)))
    middle = _decode(cat.thumbnail(uid))  # the catalog's default: the middle axial slice
    np.testing.assert_array_equal(middle, thumbnail(stored, stored.shape[0] // 2, "z"))
    assert middle.shape == tuple(smallest.shape[1:]) and max(middle.shape) <= 64


def test_an_mr_window_spans_the_whole_smallest_level(stores: Path) -> None:
    cat = voxelhub.open_catalog(stores)
    stored = cat.stored_volume(cat.series(modality="MR").iloc[0]["volume_uid"])
    data = np.asarray(stored.open(len(stored.levels) - 1)).astype(np.float64)
    lo, hi = np.percentile(data, (1, 99))
    assert window(data, {}) == pytest.approx(((lo + hi) / 2, hi - lo))
    # one window for the volume: the same voxel value is the same grey on every slice
    first, last = thumbnail(stored, 0), thumbnail(stored, stored.shape[0] - 1)
    centre, width = window(data, {})
    for plane, k in ((first, 0), (last, -1)):
        raw = np.take(data, k, axis=0)
        np.testing.assert_array_equal(
            plane, np.clip((raw - (centre - width / 2)) / width * 255, 0, 255).astype(np.uint8)
        )


def test_bad_axis_and_a_slice_outside_are_refused(stores: Path) -> None:
    cat = voxelhub.open_catalog(stores)
    stored = cat.stored_volume(cat.series().iloc[0]["volume_uid"])
    with pytest.raises(ValueError, match="axis"):
        thumbnail(stored, 0, "t")
    with pytest.raises(ValueError, match="outside"):
        thumbnail(stored, stored.shape[0], "z")
    with pytest.raises(ValueError, match="outside"):
        thumbnail(stored, -1, "z")
