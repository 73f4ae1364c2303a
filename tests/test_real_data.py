"""Every real series in ../shared/data/dicom ingests, with the geometry and flags it really has.

Clean series are compared voxel for voxel with SimpleITK's and with the dcm2niix executable's
reading (origin, spacing, direction within 1e-4); the tilted and variable-spacing CTs, the
two-echo field map and the Enhanced multi-frame MR are checked against what their PROVENANCE
files document.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

import voxelhub

DCM2NIIX = shutil.which("dcm2niix", path=str(Path(sys.executable).parent)) or shutil.which(
    "dcm2niix"
)


@pytest.fixture(scope="module")
def catalog(real_store: Path) -> voxelhub.Catalog:
    cat = voxelhub.open_catalog(real_store)
    yield cat
    cat.close()


_NOT_IMAGES = {"DIRFILE", "SHA256SUMS", "LICENSE.txt", "PROVENANCE.md"}


def _by_folder(catalog: voxelhub.Catalog, shared_dicom: Path, folder: str):
    """Catalog rows of the volumes made from one folder of the shared data."""
    uids = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID)
        for p in (shared_dicom / folder).rglob("*")
        if p.is_file() and p.name not in _NOT_IMAGES
    }
    df = catalog.series()
    return df[df["series_uid"].isin(uids)]


def _sitk_read(files: list[str]) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def _series_files(folder: Path, **match: object) -> list[str]:
    files = []
    for p in sorted(folder.glob("*")):
        if p.name in _NOT_IMAGES:
            continue
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        if all(ds.get(k) == v for k, v in match.items()):
            files.append(str(p))
    reader = sitk.ImageSeriesReader()
    ordered = reader.GetGDCMSeriesFileNames(str(folder))
    return [f for f in ordered if f in set(files)]


CLEAN = [
    ("ct_philips_ingenuity_phantom", {}),
    ("mr_ge_mprage_3d_t1", {}),
    ("mr_siemens_fieldmap_2echo", {"EchoNumbers": 1}),
    ("mr_siemens_fieldmap_2echo", {"EchoNumbers": 2}),
]


@pytest.mark.parametrize(("folder", "match"), CLEAN)
def test_clean_series_match_simpleitk(catalog, shared_dicom, folder, match):
    rows = _by_folder(catalog, shared_dicom, folder)
    if match:
        echo = match["EchoNumbers"]
        rows = rows[rows["split"].str.startswith(f"echo={echo}x")]
    assert len(rows) == 1, rows[["split", "slices"]]
    row = rows.iloc[0]
    assert row["flags"] == []
    volume = voxelhub.open_series(row, catalog=catalog)
    image = _sitk_read(_series_files(shared_dicom / folder, **match))
    expected = sitk.GetArrayFromImage(image)
    ours = volume.values
    assert ours.dtype == np.int16  # chosen on purpose: SimpleITK widens to int32
    np.testing.assert_array_equal(ours.astype(np.int64), expected.astype(np.int64))
    ours_image = volume.vh.to_simpleitk()
    np.testing.assert_allclose(ours_image.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ours_image.GetSpacing(), image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(ours_image.GetDirection(), image.GetDirection(), atol=1e-4)


def _dcm2niix(folder: Path, out: Path) -> list[nib.Nifti1Image]:
    assert DCM2NIIX, "dcm2niix executable not installed (it comes with the test extra)"
    out.mkdir()
    subprocess.run(
        [DCM2NIIX, "-z", "n", "-b", "n", "-f", "%s_%e", "-o", str(out), str(folder)],
        check=True,
        capture_output=True,
    )
    return [nib.load(p) for p in sorted(out.glob("*.nii")) if "Tilt" not in p.name]


@pytest.mark.parametrize("folder", ["ct_philips_ingenuity_phantom", "mr_ge_mprage_3d_t1"])
def test_clean_series_match_dcm2niix(catalog, shared_dicom, tmp_path, folder):
    (theirs,) = _dcm2niix(shared_dicom / folder, tmp_path / "nii")
    row = _by_folder(catalog, shared_dicom, folder).iloc[0]
    ours_path = voxelhub.open_series(row, catalog=catalog).vh.to_nifti(str(tmp_path / "ours.nii"))
    ours = nib.as_closest_canonical(nib.load(ours_path))
    theirs = nib.as_closest_canonical(theirs)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))


def test_gantry_tilt_and_variable_spacing_ge_ct(catalog, shared_dicom):
    rows = _by_folder(catalog, shared_dicom, "ct_ge_hispeed_gantry_tilt")
    assert len(rows) == 1
    row = rows.iloc[0]
    assert set(row["flags"]) == {"gantry_tilt", "non_uniform_spacing"}
    assert "18.5" in row["reasons"]
    volume = voxelhub.open_series(row, catalog=catalog)
    assert volume.sizes == {"z": 28, "y": 512, "x": 512}
    steps = np.round(np.diff(volume["z"].values), 2)
    assert set(steps) == {1.08, 4.0, 7.0}  # the real distances along the normal, not a mean
    # the affine's third column follows the real position step, so it is not orthogonal
    direction = np.asarray(volume.attrs["direction_lps"])
    normal = np.cross(direction[:, 0], direction[:, 1])
    angle = np.degrees(np.arccos(abs(direction[:, 2] @ normal)))
    assert angle == pytest.approx(18.5, abs=0.05)
    with pytest.raises(voxelhub.GeometryError, match="gantry_tilt"):
        volume.vh.to_simpleitk()


def test_philips_tilt_affine_matches_real_positions(catalog, shared_dicom):
    rows = _by_folder(catalog, shared_dicom, "ct_philips_ingenuity_tilt")
    row = rows.iloc[0]
    assert row["flags"] == ["gantry_tilt"]
    volume = voxelhub.open_series(row, catalog=catalog)
    affine = np.asarray(volume.attrs["affine_lps"])
    positions = []
    for p in (shared_dicom / "ct_philips_ingenuity_tilt").glob("I*"):
        positions.append(
            [float(v) for v in pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient]
        )
    positions = np.array(positions)
    # every slice position is origin + k * (third column) for k = 0..n-1, in some order
    predicted = affine[:3, 3] + np.outer(np.arange(len(positions)), affine[:3, 2])
    dist = np.linalg.norm(positions[:, None, :] - predicted[None, :, :], axis=2)
    assert dist.min(axis=1).max() < 1e-3


def test_two_echoes_become_two_volumes(catalog, shared_dicom):
    rows = _by_folder(catalog, shared_dicom, "mr_siemens_fieldmap_2echo")
    assert sorted(rows["split"]) == ["echo=1x5.19", "echo=2x7.65"]
    assert list(rows["slices"]) == [36, 36]
    assert np.allclose(rows["spacing_z"], 3.6, atol=1e-3)


def test_enhanced_philips_split_by_frame_type_with_per_frame_rescale(catalog, shared_dicom):
    path = shared_dicom / "mr_enhanced_multiframe" / "Philips" / "IM_0027_fMAP.dcm"
    rows = _by_folder(catalog, shared_dicom, "mr_enhanced_multiframe")
    philips = rows[
        rows["series_uid"] == str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
    ]
    assert len(philips) == 2 and list(philips["slices"]) == [32, 32]
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    for row in philips.itertuples():
        volume = voxelhub.open_series(row._asdict(), catalog=catalog).values
        assert volume.dtype == np.float32  # non-integer slopes
        # each frame of the volume equals some source frame with *its own* rescale applied
        for z in (0, 15, 31):
            matches = []
            for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
                t = item.PixelValueTransformationSequence[0]
                expected = frames[i] * np.float32(t.RescaleSlope) + np.float32(t.RescaleIntercept)
                matches.append(np.array_equal(volume[z], expected.astype(np.float32)))
            assert any(matches)


def test_enhanced_siemens_temporal_positions_make_one_4d_volume(catalog, shared_dicom):
    # four XA10 files of six frames each, told apart by TemporalPositionIndex: one 6 × 4 volume,
    # as dcm2niix converts them (64 × 64 × 6 × 4)
    rows = _by_folder(catalog, shared_dicom, "mr_enhanced_multiframe")
    siemens = rows[rows["timepoints"] > 1]
    assert len(siemens) == 1
    row = siemens.iloc[0]
    assert (row["timepoints"], row["slices"], row["rows"], row["columns"]) == (4, 6, 64, 64)
    volume = voxelhub.open_series(row, catalog=catalog)
    assert volume.dims == ("t", "z", "y", "x")
    files = sorted((shared_dicom / "mr_enhanced_multiframe" / "Siemens").rglob("*"))
    frames = {}
    for path in (p for p in files if p.is_file()):
        ds = pydicom.dcmread(path)
        for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
            t = int(item.FrameContentSequence[0].TemporalPositionIndex)
            frames.setdefault(t, []).append(ds.pixel_array[i])
    for k, t in enumerate(sorted(frames)):
        stored = {volume.isel(t=k, z=z).values.tobytes() for z in range(6)}
        assert stored == {f.astype(volume.dtype).tobytes() for f in frames[t]}


def test_every_file_is_accounted_for(real_store, shared_dicom):
    cat = voxelhub.open_catalog(real_store)
    rejected = cat.rejected()
    # the only DICOM files refused are the two Philips directory files, with a reason
    assert sorted(Path(s).name for s in rejected["source"]) == ["DIRFILE", "DIRFILE"]
    assert all("not an image" in r for r in rejected["reason"])
    report = cat.reports().iloc[0]
    assert report["volumes_failed"] == 0
    assert {Path(p).name for p in report["non_dicom"]} >= {"PROVENANCE.md", "LICENSE.txt"}


def test_nine_transfer_syntaxes_store_identical_demosaicked_volumes(catalog, shared_dicom):
    rows = _by_folder(catalog, shared_dicom, "mr_siemens_transfer_syntaxes")
    assert len(rows) == 9  # one SeriesInstanceUID, split by SeriesNumber
    assert set(rows["slices"]) == {35} and set(rows["rows"]) == {64}
    assert rows["checksum"].nunique() == 1  # RLE, JPEG Lossless, JPEG-LS, J2K: pixel-identical
    volume = voxelhub.open_series(rows.iloc[0], catalog=catalog)
    assert volume.values.dtype == np.int16 and int(volume.max()) > 0
