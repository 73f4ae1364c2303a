"""Synthetic DICOM series with known ground truth, through the public API only.

Every test writes real DICOM files with pydicom (``tests/dicom_factory.py``), ingests them with
``voxelhub.ingest`` into its own store and reads them back with ``voxelhub.open_series``: the
voxels, the affine, the flags and the report must be what the files say, whatever order the
files come in, and whatever junk lies next to them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import zarr
from pydicom.uid import generate_uid

import voxelhub
from tests.dicom_factory import SyntheticSeries, random_orientation, write_series

PIXEL_DATA_TAG = "(7FE0,0010)"


@pytest.fixture
def open_cat() -> Iterator[Callable[[Path], voxelhub.Catalog]]:
    """Open catalogs that are closed again after the test."""
    opened: list[voxelhub.Catalog] = []

    def _open(store: Path) -> voxelhub.Catalog:
        cat = voxelhub.open_catalog(store)
        opened.append(cat)
        return cat

    yield _open
    for cat in opened:
        cat.close()


def _ingest(paths: Path | list[Path], store: Path) -> voxelhub.IngestReport:
    return voxelhub.ingest(paths, store, progress=False)


def _only_row(cat: voxelhub.Catalog) -> dict:
    rows = cat.series()
    assert len(rows) == 1, rows
    return rows.iloc[0].to_dict()


def _expected_int16(series: SyntheticSeries) -> np.ndarray:
    # the factory's CT values are stored (0..3000) + intercept -1024: exact in int16
    assert np.array_equal(series.volume, np.round(series.volume))
    return series.volume.astype(np.int16)


def _normal(series: SyntheticSeries) -> np.ndarray:
    a = series.affine[:3, :3]
    n = np.cross(a[:, 0], a[:, 1])
    return n / np.linalg.norm(n)


def _offsets_along_normal(series: SyntheticSeries) -> np.ndarray:
    return (series.positions - series.positions[0]) @ _normal(series)


# -- geometry and pixels ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_random_oblique_shuffled_series_is_exact(tmp_path: Path, open_cat, seed: int) -> None:
    rng = np.random.default_rng(seed)
    series = write_series(
        tmp_path / "in",
        slices=int(rng.integers(3, 15)),
        rows=int(rng.integers(8, 40)),
        columns=int(rng.integers(8, 40)),
        pixel_spacing=(float(rng.uniform(0.3, 1.5)), float(rng.uniform(0.3, 1.5))),
        slice_step=float(rng.uniform(0.5, 5.0)),
        origin=tuple(float(v) for v in rng.uniform(-200, 200, size=3)),
        rotation=random_orientation(rng),
        shuffle=True,
        seed=seed,
    )
    report = _ingest(tmp_path / "in", tmp_path / "store")
    assert len(report.written) == 1 and not report.failed, report.summary()
    assert not report.rejected_files and not report.non_dicom
    cat = open_cat(tmp_path / "store")
    row = _only_row(cat)
    assert list(row["flags"]) == [] and row["reasons"] == ""
    assert row["slices"] == len(series.files)
    volume = voxelhub.open_series(row, catalog=cat)
    assert volume.dims == ("z", "y", "x")
    assert volume.dtype == np.int16  # CT with intercept -1024: int16, not float64 or int32
    np.testing.assert_array_equal(volume.values, _expected_int16(series))
    np.testing.assert_allclose(volume.attrs["affine_lps"], series.affine, atol=1e-4)
    np.testing.assert_allclose(volume.attrs["origin_lps"], series.positions[0], atol=1e-4)
    assert volume.attrs["flags"] == []
    step = float(np.linalg.norm(series.affine[:3, 2]))
    np.testing.assert_allclose(volume.attrs["spacing_zyx"][0], step, atol=1e-4)
    np.testing.assert_allclose(volume["z"].values, _offsets_along_normal(series), atol=1e-4)


def test_missing_slice_is_flagged_not_interpolated(tmp_path: Path, open_cat) -> None:
    series = write_series(
        tmp_path / "in",
        slices=12,
        slice_step=2.5,
        drop=(5,),
        rotation=random_orientation(np.random.default_rng(3)),
        shuffle=True,
        seed=3,
    )
    report = _ingest(tmp_path / "in", tmp_path / "store")
    assert len(report.written) == 1, report.summary()
    cat = open_cat(tmp_path / "store")
    row = _only_row(cat)
    assert list(row["flags"]) == ["missing_slices"]
    # the reason says how many slices are missing and where the gap is (after 4 × 2.5 mm)
    assert "1 slice(s) missing" in row["reasons"] and "10.0" in row["reasons"], row["reasons"]
    volume = voxelhub.open_series(row, catalog=cat)
    assert volume.attrs["flags"] == ["missing_slices"]
    assert "missing" in volume.attrs["flag_reasons"][0]
    assert volume.shape[0] == len(series.files) == 11  # nothing interpolated into the gap
    real = [k * 2.5 for k in range(12) if k != 5]
    np.testing.assert_allclose(volume["z"].values, real, atol=1e-4)
    np.testing.assert_array_equal(volume.values, _expected_int16(series))
    with pytest.raises(voxelhub.GeometryError, match="missing_slices"):
        volume.vh.to_simpleitk()


def test_non_uniform_spacing_keeps_real_positions(tmp_path: Path, open_cat) -> None:
    offsets = [0.0, 1.0, 2.0, 4.0, 7.0, 11.0]
    series = write_series(
        tmp_path / "in",
        offsets=offsets,
        rotation=random_orientation(np.random.default_rng(8)),
        shuffle=True,
        seed=8,
    )
    report = _ingest(tmp_path / "in", tmp_path / "store")
    assert len(report.written) == 1, report.summary()
    cat = open_cat(tmp_path / "store")
    row = _only_row(cat)
    assert list(row["flags"]) == ["non_uniform_spacing"]
    assert "varies" in row["reasons"]
    volume = voxelhub.open_series(row, catalog=cat)
    assert volume.shape[0] == len(offsets)
    np.testing.assert_allclose(volume["z"].values, offsets, atol=1e-4)
    np.testing.assert_array_equal(volume.values, _expected_int16(series))
    attrs = zarr.open_group(tmp_path / "store" / row["store_path"], mode="r").attrs
    geometry = attrs["voxelhub"]["geometry"]
    np.testing.assert_allclose(geometry["slice_positions_lps"], series.positions, atol=1e-4)
    np.testing.assert_allclose(geometry["slice_offsets_mm"], offsets, atol=1e-4)


@pytest.mark.parametrize("rotation_seed", [None, 21])
def test_gantry_tilt_affine_is_the_real_step(
    tmp_path: Path, open_cat, rotation_seed: int | None
) -> None:
    rotation = None if rotation_seed is None else random_orientation(np.random.default_rng(21))
    series = write_series(
        tmp_path / "in", slices=10, tilt_degrees=15, rotation=rotation, shuffle=True, seed=5
    )
    report = _ingest(tmp_path / "in", tmp_path / "store")
    assert len(report.written) == 1, report.summary()
    cat = open_cat(tmp_path / "store")
    row = _only_row(cat)
    assert list(row["flags"]) == ["gantry_tilt"]
    assert "15" in row["reasons"]
    volume = voxelhub.open_series(row, catalog=cat)
    affine = np.asarray(volume.attrs["affine_lps"])
    real_step = series.positions[1] - series.positions[0]
    np.testing.assert_allclose(affine[:3, 2], real_step, atol=1e-4)
    np.testing.assert_allclose(affine, series.affine, atol=1e-4)
    direction = np.asarray(volume.attrs["direction_lps"])
    # sheared: the stack direction is 15° off the slice normal
    cos = float(direction[:, 2] @ np.cross(direction[:, 0], direction[:, 1]))
    assert np.degrees(np.arccos(cos)) == pytest.approx(15.0, abs=1e-3)
    # the z coordinate is the distance along the normal, not along the stack
    np.testing.assert_allclose(volume["z"].values, np.arange(10) * 2.5, atol=1e-4)
    np.testing.assert_array_equal(volume.values, _expected_int16(series))
    with pytest.raises(voxelhub.GeometryError, match="gantry_tilt"):
        volume.vh.to_simpleitk()
    path = tmp_path / "tilt.nii.gz"
    volume.vh.to_nifti(str(path))
    image = nib.load(path)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ series.affine
    np.testing.assert_allclose(image.get_sform(), ras, atol=1e-4)
    np.testing.assert_allclose(
        image.get_sform(), np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine, atol=1e-4
    )
    assert int(image.header["sform_code"]) > 0
    np.testing.assert_array_equal(
        np.asarray(image.dataobj), _expected_int16(series).transpose(2, 1, 0)
    )


# -- grouping -----------------------------------------------------------------------------------


def test_duplicate_files_are_ingested_once(tmp_path: Path, open_cat) -> None:
    folder = tmp_path / "in"
    series = write_series(folder / "a", slices=9, shuffle=True, seed=4)
    shutil.copytree(folder / "a", folder / "b")
    shutil.copytree(folder / "a", folder / "c")
    # the same SOPInstanceUID under another name, in the same folder
    shutil.copy(series.files[3], folder / "a" / "renamed_copy.dcm")
    report = _ingest(folder, tmp_path / "store")
    assert len(report.written) == 1 and not report.failed, report.summary()
    assert report.duplicates == 2 * 9 + 1
    assert report.files_seen == 3 * 9 + 1
    cat = open_cat(tmp_path / "store")
    row = _only_row(cat)
    assert row["slices"] == 9 and list(row["flags"]) == []
    volume = voxelhub.open_series(row, catalog=cat)
    np.testing.assert_array_equal(volume.values, _expected_int16(series))


def test_two_echoes_in_one_series_are_two_volumes(tmp_path: Path, open_cat) -> None:
    series_uid, study_uid = generate_uid(), generate_uid()
    echoes = {
        echo: write_series(
            tmp_path / "in",
            slices=7,
            echo_number=echo,
            series_uid=series_uid,
            study_uid=study_uid,
            modality="MR",
            shuffle=True,
            seed=echo,
            name_prefix=f"echo{echo}_",
        )
        for echo in (1, 2)
    }
    np.testing.assert_array_equal(echoes[1].positions, echoes[2].positions)
    report = _ingest(tmp_path / "in", tmp_path / "store")
    assert len(report.written) == 2 and not report.failed, report.summary()
    cat = open_cat(tmp_path / "store")
    rows = cat.series()
    assert len(rows) == 2
    assert set(rows["series_uid"]) == {series_uid}
    assert rows["volume_uid"].nunique() == 2
    for row in rows.to_dict("records"):
        assert row["slices"] == 7 and list(row["flags"]) == []
        echo = 1 if "echo=1" in row["split"] else 2
        assert f"echo={echo}" in row["split"], row["split"]
        volume = voxelhub.open_series(row, catalog=cat)
        np.testing.assert_array_equal(volume.values, echoes[echo].volume.astype(np.uint16))
    with pytest.raises(voxelhub.NotFound, match="split into 2 volumes"):
        voxelhub.open_series(series_uid, catalog=cat)


# -- bad input --------------------------------------------------------------------------------


def _truncate_in_pixel_data(path: Path, keep_pixel_bytes: int = 100) -> None:
    """Cut a file ``keep_pixel_bytes`` into its pixel data (the last element of the file)."""
    data = path.read_bytes()
    pixel_bytes = len(pydicom.dcmread(path).PixelData)
    assert data.endswith(pydicom.dcmread(path).PixelData)
    path.write_bytes(data[: len(data) - pixel_bytes + keep_pixel_bytes])


def _write_no_pixel_data(source: Path, target: Path) -> None:
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    assert "PixelData" not in ds and ds.file_meta.TransferSyntaxUID
    ds.save_as(target, enforce_file_format=True)


def test_corrupt_files_are_reported_and_the_rest_ingested(tmp_path: Path, open_cat) -> None:
    folder = tmp_path / "in"
    clean = write_series(folder / "clean", slices=8, seed=10)
    gappy = write_series(folder / "gappy", slices=10, shuffle=True, seed=11)
    junk = folder / "junk"
    junk.mkdir()
    # a truncated copy of a good file (the good one is still there) …
    truncated_copy = junk / "truncated_copy.dcm"
    shutil.copy(clean.files[2], truncated_copy)
    _truncate_in_pixel_data(truncated_copy)
    # … and a slice of another series truncated in place: that series loses a position
    truncated = gappy.files[4]
    _truncate_in_pixel_data(truncated)
    no_pixels = junk / "no_pixels.dcm"
    _write_no_pixel_data(clean.files[0], no_pixels)
    random_bytes = junk / "random.dcm"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    text = junk / "notes.txt"
    text.write_text("scanned on Tuesday\n")

    report = _ingest(folder, tmp_path / "store")
    assert not report.failed, report.summary()
    assert len(report.written) == 2, report.summary()
    assert sorted(report.non_dicom) == sorted([str(text), str(random_bytes)])
    rejected = {r["source"]: r for r in report.rejected_files}
    assert set(rejected) == {str(truncated_copy), str(truncated), str(no_pixels)}
    for source in (truncated_copy, truncated):
        assert rejected[str(source)]["tag"] == PIXEL_DATA_TAG
        assert "truncated" in rejected[str(source)]["reason"]
    assert rejected[str(no_pixels)]["tag"] == PIXEL_DATA_TAG
    assert "no pixel data" in rejected[str(no_pixels)]["reason"]
    summary = report.summary()
    assert (
        PIXEL_DATA_TAG in summary
        and "2 non-DICOM" in summary
        and "3 DICOM file(s) rejected" in summary
    )

    cat = open_cat(tmp_path / "store")
    listed = cat.rejected()
    assert set(listed["source"]) == set(rejected)
    assert set(listed["tag"]) == {PIXEL_DATA_TAG}
    assert set(listed["report_id"]) == {report.report_id}

    rows = {r["series_uid"]: r for r in cat.series().to_dict("records")}
    assert set(rows) == {clean.series_uid, gappy.series_uid}
    good = rows[clean.series_uid]
    assert list(good["flags"]) == [] and good["slices"] == 8
    volume = voxelhub.open_series(good, catalog=cat)
    np.testing.assert_array_equal(volume.values, _expected_int16(clean))
    # the series that lost its 5th slice is still ingested, with the gap reported
    hole = rows[gappy.series_uid]
    assert list(hole["flags"]) == ["missing_slices"] and hole["slices"] == 9
    volume = voxelhub.open_series(hole, catalog=cat)
    np.testing.assert_array_equal(volume.values, np.delete(_expected_int16(gappy), 4, axis=0))
    np.testing.assert_allclose(volume["z"].values, np.delete(np.arange(10) * 2.5, 4), atol=1e-4)


# -- repeatability and entry points ---------------------------------------------------------


def test_ingesting_twice_changes_nothing(tmp_path: Path, open_cat) -> None:
    write_series(tmp_path / "in" / "a", slices=6, seed=1)
    write_series(tmp_path / "in" / "b", slices=5, tilt_degrees=10, seed=2)
    store = tmp_path / "store"
    first = _ingest(tmp_path / "in", store)
    assert len(first.written) == 2 and not first.unchanged, first.summary()
    cat = open_cat(store)
    before = cat.series().set_index("volume_uid")
    inodes = {uid: (store / p).stat().st_ino for uid, p in before["store_path"].items()}

    second = _ingest(tmp_path / "in", store)
    assert second.written == [] and not second.failed, second.summary()
    assert sorted(second.unchanged) == sorted(before.index)
    after = cat.series().set_index("volume_uid")
    assert len(after) == len(before) == 2
    assert after["checksum"].to_dict() == before["checksum"].to_dict()
    assert after["store_path"].to_dict() == before["store_path"].to_dict()
    # not rewritten: the very same folders are still there
    assert {uid: (store / p).stat().st_ino for uid, p in after["store_path"].items()} == inodes


def test_zip_archive_ingests_to_the_same_checksum(tmp_path: Path, open_cat) -> None:
    series = write_series(
        tmp_path / "in",
        slices=8,
        rotation=random_orientation(np.random.default_rng(9)),
        shuffle=True,
        seed=9,
    )
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(series.files, reverse=True):
            zf.write(path, arcname=f"dicom/{path.name}")
    from_folder = _ingest(tmp_path / "in", tmp_path / "store_folder")
    from_zip = _ingest(archive, tmp_path / "store_zip")
    assert len(from_folder.written) == len(from_zip.written) == 1, from_zip.summary()
    assert not from_zip.rejected_files and not from_zip.non_dicom
    row_folder = _only_row(open_cat(tmp_path / "store_folder"))
    zip_cat = open_cat(tmp_path / "store_zip")
    row_zip = _only_row(zip_cat)
    assert row_zip["checksum"] == row_folder["checksum"]
    assert row_zip["volume_uid"] == row_folder["volume_uid"]
    volume = voxelhub.open_series(row_zip, catalog=zip_cat)
    np.testing.assert_array_equal(volume.values, _expected_int16(series))
    np.testing.assert_allclose(volume.attrs["affine_lps"], series.affine, atol=1e-4)


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxelhub.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_ingest(tmp_path: Path, open_cat) -> None:
    series = write_series(tmp_path / "in", slices=6, seed=6)
    store = tmp_path / "store"
    done = _cli("ingest", tmp_path / "in", "--store", store, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "project default: 1 volume(s) written" in done.stdout
    assert "6 file(s) seen" in done.stdout
    row = _only_row(open_cat(store))
    assert row["slices"] == 6 and row["series_uid"] == series.series_uid

    missing = tmp_path / "no" / "such" / "folder"
    failed = _cli("ingest", missing, "--store", tmp_path / "store2", "--quiet")
    assert failed.returncode == 2
    assert "no such file or folder" in failed.stderr
    assert str(missing) in failed.stderr
    assert "Traceback" not in failed.stderr
