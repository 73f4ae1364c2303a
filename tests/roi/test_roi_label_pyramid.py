"""Label images carry their image's pyramid: same levels, valid OME-Zarr 0.5, shown at each level."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import zarr

import voxelhub
from tests.conftest import SHARED
from tests.dicom_factory import write_series
from voxelhub.errors import StoreError
from voxelhub.roi import imports, read_labels, write_labels
from voxelhub.roi.labels import downsample_labels

SHAPE = (70, 150, 140)  # two shards deep, three in-plane levels
DCMQI = SHARED / "data" / "roi" / "dcmqi_ct3_liver"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("label_pyramid")
    write_series(
        root / "in",
        slices=SHAPE[0],
        rows=SHAPE[1],
        columns=SHAPE[2],
        pixel_spacing=(0.8, 0.8),
        slice_step=1.0,
        seed=5,
    )
    voxelhub.ingest(root / "in", root / "store", progress=False)
    cat = voxelhub.open_catalog(root / "store")
    row = cat.series().iloc[0]
    yield root / "store", cat, row
    cat.close()


def _mode(block: np.ndarray) -> int:
    """Independent rule: most frequent value; ties to a label over 0, then the smaller label."""
    counts = Counter(int(v) for v in block.ravel())
    return max(counts, key=lambda v: (counts[v], v != 0, -v))


def _reference(labels: np.ndarray, factor: tuple[int, int, int], shape: tuple[int, ...]):
    out = np.zeros(shape, dtype=labels.dtype)
    fz, fy, fx = factor
    for z, y, x in np.ndindex(*shape):
        out[z, y, x] = _mode(
            labels[z * fz : (z + 1) * fz, y * fy : (y + 1) * fy, x * fx : (x + 1) * fx]
        )
    return out


def test_mode_downsampling_against_a_plain_loop() -> None:
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 0, 0, 1, 2, 7], size=(9, 13, 11)).astype(np.uint8)
    for factor in ((1, 2, 2), (2, 2, 2), (4, 4, 4), (1, 8, 8)):
        shape = tuple(-(-n // f) for n, f in zip(labels.shape, factor, strict=True))
        np.testing.assert_array_equal(
            downsample_labels(labels, factor), _reference(labels, factor, shape)
        )
    # a structure filling half a block survives, a thin one keeps its voxels at level 1
    half = np.zeros((2, 2, 2), dtype=np.uint8)
    half[0] = 3
    assert downsample_labels(half, (2, 2, 2)).item() == 3


def test_labels_have_the_image_levels_and_validate_as_ome_zarr(stored) -> None:
    from ome_zarr_models.v05.image import Image

    store, cat, row = stored
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[10:60, 30:120, 20:90] = 1
    labels[30:40, 50:60, 40:47] = 2  # small: shows at coarse levels only by its mode
    write_labels(cat, row, "organs", labels, names={1: "body", 2: "lesion"})
    volume_group = zarr.open_group(store / row["store_path"], mode="r")
    label_group = volume_group["labels"]["organs"]
    image_levels = [d["path"] for d in volume_group.attrs["ome"]["multiscales"][0]["datasets"]]
    label_sets = label_group.attrs["ome"]["multiscales"][0]["datasets"]
    assert len(image_levels) >= 3
    assert [d["path"] for d in label_sets] == image_levels
    for image_set, label_set in zip(
        volume_group.attrs["ome"]["multiscales"][0]["datasets"], label_sets, strict=True
    ):
        assert label_set["coordinateTransformations"] == image_set["coordinateTransformations"]
        path = image_set["path"]
        assert label_group[path].shape == volume_group[path].shape
        assert label_group[path].shards == volume_group[path].shards
    Image.from_zarr(volume_group)  # raises if any label image lacks a level
    meta = volume_group.attrs["voxelhub"]["levels"]
    for index, entry in enumerate(meta):
        got = read_labels(cat, row, "organs", level=index)
        factor = tuple(entry["factor"])
        expected = _reference(labels, factor, tuple(entry["shape"])) if index else labels
        np.testing.assert_array_equal(got.values, expected)
        volume = voxelhub.open_series(row, catalog=cat, level=index)
        np.testing.assert_array_equal(got["x"].values, volume["x"].values)
        assert got.attrs["affine_lps"] == volume.attrs["affine_lps"]
    assert 2 in np.unique(read_labels(cat, row, "organs", level=1).values)
    # what the viewers read: every level stored
    stored_volume = cat.stored_volume(row)
    assert len(stored_volume.label_levels("organs")) == len(image_levels)
    with pytest.raises(StoreError, match="levels 0"):
        read_labels(cat, row, "organs", level=len(image_levels))


def test_imported_seg_validates_on_a_real_ct(tmp_path) -> None:
    from ome_zarr_models.v05.image import Image

    if not DCMQI.is_dir():
        pytest.fail(f"real ROI test data missing: {DCMQI}")
    voxelhub.ingest(DCMQI / "image", tmp_path / "store", progress=False)
    cat = voxelhub.open_catalog(tmp_path / "store")
    row = cat.series().iloc[0]
    imports.import_seg(cat, row, DCMQI / "partial_overlaps.dcm", name="parts")
    imports.import_seg(cat, row, DCMQI / "liver.dcm", name="liver")
    group = zarr.open_group(tmp_path / "store" / row["store_path"], mode="r")
    model = Image.from_zarr(group)
    assert len(model.ome_attributes.multiscales[0].datasets) == 4
    assert len(group["labels"].attrs["ome"]["labels"]) == 6
    cat.close()
