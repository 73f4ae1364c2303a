"""The real 4-D MR series of ../shared/data/dicom against dcm2niix's reference output (``Ref/``).

Classic GE fMRI (volumes told apart only by acquisition order), GE ``epi_pepolar`` (reversed
volumes stored with their rows reversed) and United Imaging mosaic DTI (one 4×5 mosaic per
volume, b-values in private tags) each become ONE 4-D volume whose voxels equal dcm2niix's and
whose world positions agree within 1e-3 mm.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

import voxelhub


@pytest.fixture(scope="module")
def catalog(real_store: Path):
    cat = voxelhub.open_catalog(real_store)
    yield cat
    cat.close()


def _rows(catalog, folder: Path):
    first = next(p for p in sorted(folder.glob("*.dcm")))
    uid = str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)
    df = catalog.series()
    return df[df["series_uid"] == uid]


def _canonical(volume, tmp_path: Path) -> nib.Nifti1Image:
    path = voxelhub.to_nifti(volume, str(tmp_path / "ours.nii"))
    return nib.as_closest_canonical(nib.load(path))


def _world_corners(image: nib.Nifti1Image) -> np.ndarray:
    shape = np.asarray(image.shape[:3]) - 1
    corners = np.array(
        [[i, j, k] for i in (0, shape[0]) for j in (0, shape[1]) for k in (0, shape[2])]
    )
    return nib.affines.apply_affine(image.affine, corners)


def _same_as_reference(ours: nib.Nifti1Image, ref: nib.Nifti1Image) -> None:
    ref = nib.as_closest_canonical(ref)
    assert ours.shape == ref.shape
    assert np.abs(_world_corners(ours) - _world_corners(ref)).max() < 1e-3
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(ref.dataobj))


def test_ge_classic_fmri_is_one_4d_volume_in_acquisition_order(catalog, shared_dicom, tmp_path):
    folder = shared_dicom / "mr_ge_fmri_classic"
    rows = _rows(catalog, folder)
    assert len(rows) == 1, rows[["split", "slices"]]
    row = rows.iloc[0]
    assert (row["timepoints"], row["slices"], row["rows"], row["columns"]) == (10, 15, 64, 64)
    assert "volumes_by_instance_order" in row["flags"]
    stored = catalog.stored_volume(row["volume_uid"])
    assert stored.is_4d and stored.shape == (15, 64, 64)  # levels are spatial; t is the table
    volume = voxelhub.open_series(row, catalog=catalog)
    assert volume.dims == ("t", "z", "y", "x")
    ref_json = next((folder / "Ref").glob("*.json"))
    import json

    expected_tr = json.loads(ref_json.read_text())["RepetitionTime"]
    assert volume.attrs["acquisition"]["RepetitionTime"] == pytest.approx(expected_tr)
    (ref_path,) = (folder / "Ref").glob("*.nii")
    _same_as_reference(_canonical(volume, tmp_path), nib.load(ref_path))
    np.testing.assert_allclose(np.diff(volume["t"].values), volume.attrs["repetition_time"])


def test_ge_pepolar_reversed_volumes_are_flipped_back(catalog, shared_dicom, tmp_path):
    folder = shared_dicom / "mr_ge_epi_pepolar"
    rows = _rows(catalog, folder)
    assert len(rows) == 1
    row = rows.iloc[0]
    assert (row["timepoints"], row["slices"]) == (4, 60)
    assert "ge_pepolar_reversed" in row["flags"]
    volume = voxelhub.open_series(row, catalog=catalog)
    reversed_ = volume["rows_reversed"].values
    assert reversed_.sum() == 2
    forward = nib.load(folder / "Ref" / "6_FM_cv12_2_3mm.nii")
    flipped = nib.load(folder / "Ref" / "1006_FM_cv12_2_3mm.nii")
    for which, ref in ((False, forward), (True, flipped)):
        part = volume.isel(t=np.flatnonzero(reversed_ == which))
        out = tmp_path / ("reversed" if which else "forward")
        out.mkdir()
        _same_as_reference(_canonical(part, out), ref)
    directions = set(volume["phase_encoding_direction"].values)
    assert directions == {"j", "j-"}


def test_uih_mosaic_dti_is_one_4d_volume_with_its_gradient_table(catalog, shared_dicom, tmp_path):
    folder = shared_dicom / "mr_uih_dti_mosaic"
    rows = _rows(catalog, folder)
    assert len(rows) == 1
    row = rows.iloc[0]
    assert (row["timepoints"], row["slices"], row["rows"], row["columns"]) == (17, 20, 64, 64)
    assert "uih_mosaic" in row["flags"]
    volume = voxelhub.open_series(row, catalog=catalog)
    (ref_path,) = (folder / "Ref").glob("*.nii")
    _same_as_reference(_canonical(volume, tmp_path), nib.load(ref_path))
    (bval,) = (folder / "Ref").glob("*.bval")
    expected = np.loadtxt(bval)
    np.testing.assert_allclose(volume["b_value"].values, expected, rtol=0, atol=1e-3)


def test_export_writes_dcm2niix_equal_bval_bvec_and_sidecar(catalog, shared_dicom, tmp_path):
    import json
    import subprocess
    import sys

    folder = shared_dicom / "mr_uih_dti_mosaic"
    row = _rows(catalog, folder).iloc[0]
    out = tmp_path / "dti.nii.gz"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "voxelhub.cli",
            "export",
            row["volume_uid"],
            str(out),
            "--store",
            str(catalog.location.root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    ref_bval = next((folder / "Ref").glob("*.bval"))
    ref_bvec = next((folder / "Ref").glob("*.bvec"))
    ref_json = json.loads(next((folder / "Ref").glob("*.json")).read_text())
    assert (tmp_path / "dti.bval").read_text().split() == ref_bval.read_text().split()
    ours = np.loadtxt(tmp_path / "dti.bvec")
    # dcm2niix reverses the row axis of its NIfTI: that negates y and turns the affine's
    # determinant negative, so FSL's x negation no longer applies: its vectors are (-x, -y, z).
    # It also reads UIH's (0065,1037) as image axes, where the scanner's own table (Grad_AP.csv,
    # image axes) shows it is in patient axes: the two differ by the slices' 1.75° obliquity.
    theirs = np.loadtxt(ref_bvec)
    np.testing.assert_allclose(ours * np.array([[-1.0], [-1.0], [1.0]]), theirs, atol=0.05)
    volume = voxelhub.open_series(row, catalog=catalog)
    table = np.loadtxt(folder / "Ref" / "Grad_AP.csv", delimiter=",")
    np.testing.assert_allclose(volume.vh.gradients("image")[1:], table, atol=1e-6)
    assert "uih_gradient_frame" in row["flags"]
    sidecar = json.loads((tmp_path / "dti.json").read_text())
    for key in ("RepetitionTime", "EchoTime", "FlipAngle", "MagneticFieldStrength"):
        assert sidecar[key] == pytest.approx(ref_json[key]), key
    image = nib.load(out)
    assert image.shape == (64, 64, 20, 17)
    assert image.header.get_zooms()[3] == pytest.approx(ref_json["RepetitionTime"])
