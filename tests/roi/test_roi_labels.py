"""Label images stored next to their volume: round trip, names, geometry checks, NGFF readers."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

import voxelhub
from tests.dicom_factory import write_series
from voxelhub.errors import GeometryError, StoreError
from voxelhub.roi import list_labels, read_labels, write_labels

SHAPE = (70, 40, 36)  # two shards deep in z


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("roi_labels")
    write_series(root / "in", slices=SHAPE[0], rows=SHAPE[1], columns=SHAPE[2], seed=3)
    voxelhub.ingest(root / "in", root / "store", progress=False)
    cat = voxelhub.open_catalog(root / "store")
    row = cat.series().iloc[0]
    yield root / "store", row, cat
    cat.close()


def _organs() -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.int32)
    labels[5:60, 10:30, 8:20] = 1
    labels[20:40, 12:18, 22:30] = 2
    return labels


def test_round_trip_with_names_on_the_volume_grid(stored) -> None:
    store, row, cat = stored
    written = write_labels(cat, row, "organs", _organs(), names={1: "liver", 2: "tumour"})
    assert written.dtype == "|u1"
    back = read_labels(cat, row["volume_uid"], "organs")
    assert back.chunks is not None  # lazy
    np.testing.assert_array_equal(back.values, _organs())
    volume = voxelhub.open_series(row, catalog=cat)
    for dim in "zyx":
        np.testing.assert_array_equal(back[dim].values, volume[dim].values)
    assert back.attrs["label_names"] == {1: "liver", 2: "tumour"}
    assert back.attrs["affine_lps"] == volume.attrs["affine_lps"]
    assert not back.attrs["stale"]
    assert "organs" in list_labels(cat, row)
    # chunked like the volume
    vol = zarr.open_group(store / row["store_path"], mode="r")
    lab = zarr.open_group(store / row["store_path"] / "labels" / "organs", mode="r")
    assert lab["0"].chunks == vol["0"].chunks
    assert lab["0"].shards == vol["0"].shards
    assert not any((store / ".tmp").iterdir())


def test_mask_from_dask_default_name_and_overwrite(stored) -> None:
    _, row, cat = stored
    mask = da.from_array(_organs() == 1, chunks=(16, 40, 36))
    write_labels(cat, row, "liver", mask)
    assert read_labels(cat, row, "liver").attrs["label_names"] == {1: "liver"}
    with pytest.raises(StoreError, match="overwrite=True"):
        write_labels(cat, row, "liver", mask)
    write_labels(cat, row, "liver", _organs() == 2, overwrite=True)
    np.testing.assert_array_equal(read_labels(cat, row, "liver").values, _organs() == 2)
    assert list_labels(cat, row).count("liver") == 1


def test_shape_mismatch_names_both_shapes(stored) -> None:
    _, row, cat = stored
    with pytest.raises(GeometryError, match=r"\(70, 40, 35\).*\(70, 40, 36\)"):
        write_labels(cat, row, "bad", np.zeros((70, 40, 35), dtype=np.uint8))
    assert "bad" not in list_labels(cat, row)


def test_missing_names_and_negative_values_are_refused(stored) -> None:
    _, row, cat = stored
    with pytest.raises(ValueError, match="no name for label value"):
        write_labels(cat, row, "partial", _organs(), names={1: "liver"})
    with pytest.raises(ValueError, match=">= 0"):
        write_labels(cat, row, "negative", -_organs())
    with pytest.raises(StoreError, match="stored:"):
        read_labels(cat, row, "partial")


def test_a_failed_write_leaves_nothing_visible(stored) -> None:
    store, row, cat = stored

    def block(x: np.ndarray, block_info=None) -> np.ndarray:
        if block_info[None]["chunk-location"][0] == 1:
            raise RuntimeError("disk full")
        return np.ones_like(x)

    source = da.zeros(SHAPE, dtype=np.uint8, chunks=(64, 40, 36))
    failing = source.map_blocks(block, dtype=np.uint8)
    with pytest.raises(RuntimeError, match="disk full"):
        write_labels(cat, row, "halfway", failing, names={1: "x"})
    assert "halfway" not in list_labels(cat, row)
    assert not (store / row["store_path"] / "labels" / "halfway").exists()
    assert not any((store / ".tmp").iterdir())


def test_ome_zarr_reader_and_schema_see_labels(stored) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr_models.v05.labels import Labels

    store, row, cat = stored
    write_labels(cat, row, "for-reader", _organs(), names={1: "liver", 2: "tumour"})
    path = Path(store / row["store_path"])
    nodes = list(Reader(parse_url(str(path / "labels" / "for-reader")))())
    label = next(n for n in nodes if any(isinstance(s, Label) for s in n.specs))
    np.testing.assert_array_equal(np.asarray(label.data[0]), _organs())
    assert label.metadata["properties"][1]["name"] == "liver"
    assert label.metadata["properties"][2]["name"] == "tumour"
    assert set(label.metadata["color"]) == {1, 2}
    model = Labels.from_zarr(zarr.open_group(path / "labels", mode="r"))
    assert "for-reader" in model.ome_attributes.labels
    image_label = model.get_image_labels_group("for-reader")
    assert image_label.ome_attributes.image_label.properties is not None
