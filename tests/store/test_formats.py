"""Stored volumes open with plain zarr, xarray and ome-zarr's reader; SimpleITK round-trips."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import xarray as xr
import zarr

import voxelhub
from tests.dicom_factory import random_orientation, write_series


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fmt")
    series = write_series(
        root / "in",
        slices=70,
        rows=150,
        columns=130,
        rotation=random_orientation(np.random.default_rng(7)),
        seed=7,
    )
    voxelhub.ingest(root / "in", root / "store", progress=False)
    cat = voxelhub.open_catalog(root / "store")
    row = cat.series().iloc[0]
    yield series, root / "store", row, cat
    cat.close()


def test_plain_zarr_and_xarray_open_it(stored) -> None:
    series, store, row, _ = stored
    path = store / row["store_path"]
    group = zarr.open_group(path, mode="r")
    assert group.attrs["ome"]["version"] == "0.5"
    np.testing.assert_array_equal(group["0"][:], series.volume.astype(np.int16))
    ds = xr.open_zarr(
        path,
        zarr_format=3,
        consolidated=False,
        drop_variables=[k for k in group.array_keys() if k != "0"],
    )
    np.testing.assert_array_equal(ds["0"].values, series.volume.astype(np.int16))


def test_ome_zarr_reader_sees_the_pyramid(stored) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    _, store, row, _ = stored
    node = next(iter(Reader(parse_url(str(store / row["store_path"])))()))
    shapes = [tuple(level.shape) for level in node.data]
    assert shapes[0] == (70, 150, 130)
    assert max(shapes[-1][1:]) <= 64  # down to a thumbnail-sized level
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales[0] == pytest.approx([2.5, 0.7, 0.9])
    assert scales[1][1] == pytest.approx(1.4)


def test_metadata_validates_against_the_ngff_schema(stored) -> None:
    from ome_zarr_models.v05.image import Image

    _, store, row, _ = stored
    image = Image.from_zarr(zarr.open_group(store / row["store_path"], mode="r"))
    multiscale = image.ome_attributes.multiscales[0]
    assert [a.name for a in multiscale.axes] == ["z", "y", "x"]
    assert len(multiscale.datasets) >= 3


def test_sharded_into_few_objects(stored) -> None:
    _, store, row, _ = stored
    files = [p for p in (store / row["store_path"]).rglob("*") if p.is_file()]
    assert len(files) < 20  # shards, not thousands of chunk files


def test_open_series_is_lazy_and_in_millimetres(stored) -> None:
    series, _, row, cat = stored
    volume = voxelhub.open_series(row, catalog=cat)
    assert volume.chunks is not None  # dask-backed
    assert volume.dims == ("z", "y", "x")
    np.testing.assert_allclose(volume["z"].values, np.arange(70) * 2.5, atol=1e-6)
    np.testing.assert_allclose(volume["x"].values[:3], [0, 0.9, 1.8])
    np.testing.assert_allclose(volume.vh.affine, series.affine, atol=1e-4)
    assert volume.attrs["modality"] == "CT" and "lung" in volume.attrs["window_presets"]
    assert int(volume.isel(z=10).max()) == int(series.volume[10].max())
    small = voxelhub.open_series(row, level=1, catalog=cat)
    assert small.sizes["y"] == 75 and small.attrs["spacing_zyx"][1] == pytest.approx(1.4)
    with pytest.raises(voxelhub.StoreError, match="level 9 out of range"):
        voxelhub.open_series(row, level=9, catalog=cat)


def test_simpleitk_round_trip(stored, tmp_path: Path) -> None:
    _, _, row, cat = stored
    volume = voxelhub.open_series(row, catalog=cat)
    image = volume.vh.to_simpleitk()
    back = voxelhub.from_simpleitk(image, modality="CT")
    np.testing.assert_array_equal(back.values, volume.values)
    np.testing.assert_allclose(back.attrs["affine_lps"], volume.attrs["affine_lps"], atol=1e-9)
    sitk.WriteImage(image, str(tmp_path / "v.nrrd"))
    again = sitk.ReadImage(str(tmp_path / "v.nrrd"))
    assert again.GetOrigin() == pytest.approx(image.GetOrigin())
    assert again.GetDirection() == pytest.approx(image.GetDirection())


def test_missing_store_folder_is_a_clear_error(stored, tmp_path: Path) -> None:
    store = stored[1]
    loc = voxelhub.open_location(store)
    with pytest.raises(voxelhub.StoreError, match="no volume at"):
        loc.open_group("projects/default/absent.ome.zarr")


def test_store_on_object_storage(tmp_path: Path, s3_endpoint: str, monkeypatch) -> None:
    import s3fs

    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    options = {
        "key": "test",
        "secret": "test",
        "endpoint_url": s3_endpoint,
        "skip_instance_cache": True,
    }
    bucket = f"vh-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(**options).mkdir(bucket)
    series = write_series(tmp_path / "in", slices=9, seed=3)
    url = f"s3://{bucket}/store"
    location = voxelhub.open_location(url, options)
    catalog_url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    report = voxelhub.ingest(tmp_path / "in", location, catalog_url=catalog_url, progress=False)
    assert len(report.written) == 1, report.summary()
    cat = voxelhub.open_catalog(url, catalog_url=catalog_url, storage_options=options)
    volume = voxelhub.open_series(cat.series().iloc[0], catalog=cat)
    np.testing.assert_array_equal(volume.values, series.volume.astype(np.int16))
    fs = s3fs.S3FileSystem(**options)
    leftovers = fs.ls(f"{bucket}/store/.tmp") if fs.exists(f"{bucket}/store/.tmp") else []
    assert leftovers == []  # the temporary copy was removed after commit
    cat.close()


def test_a_project_folder_one_cannot_enter_is_access_denied(tmp_path: Path) -> None:
    """Checked without root: a folder with no permissions reads as AccessDenied, not 'missing'."""
    import os

    write_series(tmp_path / "in", slices=3)
    report = voxelhub.ingest(tmp_path / "in", tmp_path / "store", project="closed", progress=False)
    project_dir = tmp_path / "store" / "projects" / "closed"
    assert (project_dir.stat().st_mode & 0o777) == 0o700  # new projects start private
    if os.geteuid() == 0:
        return  # root enters every folder; tests/hub checks this with real users
    cat = voxelhub.open_catalog(tmp_path / "store")
    project_dir.chmod(0)
    try:
        with pytest.raises(voxelhub.AccessDenied, match="ask an admin"):
            voxelhub.open_series(report.written[0], catalog=cat)
    finally:
        project_dir.chmod(0o700)
        cat.close()
