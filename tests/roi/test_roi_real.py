"""ROI objects as real tools wrote them (../shared/data/roi): dcmqi SEG, rt-utils RTSTRUCT.

Expected masks never come from VoxelHub's own importers: the dcmqi NRRD label maps the SEGs were
made from, put on the volume's grid through the two affines only, and the rt-utils contours filled
with ``skimage.measure.points_in_poly`` at voxel centres computed from the CT headers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid
from skimage.measure import points_in_poly

import voxelhub
from tests.conftest import SHARED
from voxelhub.errors import DicomError, GeometryError
from voxelhub.roi import imports, list_labels, read_labels
from voxelhub.roi.errors import (
    EmptyLabels,
    NoOrientation,
    NotARoiFile,
    NotLabels,
    PlacementError,
    ReferenceMismatch,
    UnreadableRoi,
)
from voxelhub.store.volume import nifti_affine

ROI = SHARED / "data" / "roi"
DCMQI = ROI / "dcmqi_ct3_liver"
RTUTILS = ROI / "rtutils_mock"


@pytest.fixture(scope="module")
def roi_data() -> Path:
    if not ROI.is_dir():
        pytest.fail(f"real ROI test data missing: {ROI}")
    return ROI


def _ingest(folder: Path, store: Path):
    report = voxelhub.ingest(folder, store, progress=False)
    assert not report.failed, report.summary()
    cat = voxelhub.open_catalog(store)
    rows = cat.series()
    assert len(rows) == 1
    return cat, rows.iloc[0]


@pytest.fixture(scope="module")
def dcmqi_ct(roi_data, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("dcmqi")
    cat, row = _ingest(DCMQI / "image", root / "store")
    yield root, cat, row
    cat.close()


@pytest.fixture(scope="module")
def dcmqi_ct_other_uids(roi_data, tmp_path_factory: pytest.TempPathFactory):
    """The same CT with new SOP Instance UIDs: the SEG's references do not resolve."""
    root = tmp_path_factory.mktemp("dcmqi_copy")
    (root / "in").mkdir()
    for path in sorted((DCMQI / "image").iterdir()):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(root / "in" / path.name)
    cat, row = _ingest(root / "in", root / "store")
    yield root, cat, row
    cat.close()


@pytest.fixture(scope="module")
def rtutils_ct(roi_data, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("rtutils")
    (root / "in").mkdir()
    for name in ("ct_1.dcm", "ct_2.dcm"):
        shutil.copy(RTUTILS / name, root / "in" / name)
    cat, row = _ingest(root / "in", root / "store")
    yield root, cat, row
    cat.close()


def _nrrd_on_volume(path: Path, volume) -> np.ndarray:
    """A NRRD label map on the volume's grid through the affines alone (must land on voxels)."""
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    to_volume = np.linalg.inv(np.asarray(volume.attrs["affine_lps"], dtype=float)) @ affine
    z, y, x = np.indices(array.shape).reshape(3, -1)
    idx = to_volume @ np.stack([x, y, z, np.ones_like(x)])
    np.testing.assert_allclose(idx[:3], np.rint(idx[:3]), atol=1e-3)  # same voxels
    ix, iy, iz = np.rint(idx[:3]).astype(int)
    out = np.zeros(volume.shape, dtype=array.dtype)
    out[iz, iy, ix] = array[z, y, x]
    assert out.shape == array.shape
    return out


def test_dcmqi_liver_seg_equals_its_nrrd_by_references(dcmqi_ct) -> None:
    _, cat, row = dcmqi_ct
    volume = voxelhub.open_series(row, catalog=cat)
    got = imports.import_seg(cat, row, DCMQI / "liver.dcm", name="liver")
    assert list(got) == ["liver"]
    liver = got["liver"]
    assert "referenced SOP Instance UID" in liver.notes[0]
    assert liver.names == {1: "Liver"}
    expected = _nrrd_on_volume(DCMQI / "liver_seg.nrrd", volume)
    assert expected.sum() > 100_000
    np.testing.assert_array_equal(read_labels(cat, row, "liver").values, expected)


def test_dcmqi_liver_seg_by_positions_when_references_do_not_resolve(dcmqi_ct_other_uids) -> None:
    _, cat, row = dcmqi_ct_other_uids
    volume = voxelhub.open_series(row, catalog=cat)
    liver = imports.import_seg(cat, row, DCMQI / "liver.dcm")["seg"]
    assert "position along the slice normal" in liver.notes[0]
    assert not liver.resampled
    expected = _nrrd_on_volume(DCMQI / "liver_seg.nrrd", volume)
    np.testing.assert_array_equal(liver.labels.values, expected)


def test_dcmqi_overlapping_seg_imports_all_five_segments(dcmqi_ct) -> None:
    _, cat, row = dcmqi_ct
    volume = voxelhub.open_series(row, catalog=cat)
    got = imports.import_seg(cat, row, DCMQI / "partial_overlaps.dcm", name="parts")
    names = ["GREEN", "ORANGE", "PURPLE", "LIGHT_BLUE", "DARK_BLUE"]
    assert list(got) == [f"parts-{n}" for n in names]
    maps = [_nrrd_on_volume(DCMQI / f"partial_overlaps-{i}.nrrd", volume) for i in (1, 2, 3)]
    for number, label in enumerate(names, start=1):
        expected = np.any([m == number for m in maps], axis=0)
        assert expected.any()
        part = got[f"parts-{label}"]
        assert part.names == {1: label}
        assert any("overlap" in n for n in part.notes)
        np.testing.assert_array_equal(read_labels(cat, row, f"parts-{label}").values, expected)
    assert {f"parts-{n}" for n in names} <= set(list_labels(cat, row))
    with pytest.raises(PlacementError, match="overlap"):
        imports.import_seg(cat, row, DCMQI / "partial_overlaps.dcm", overlaps="error")


def test_rtutils_rtstruct_keeps_its_hole(rtutils_ct) -> None:
    _, cat, row = rtutils_ct
    headers = sorted(
        (pydicom.dcmread(RTUTILS / n) for n in ("ct_1.dcm", "ct_2.dcm")),
        key=lambda d: float(d.ImagePositionPatient[2]),
    )
    rt = pydicom.dcmread(RTUTILS / "rt.dcm")
    contours = [
        np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
        for c in rt.ROIContourSequence[0].ContourSequence
    ]
    expected = np.zeros((2, 512, 512), dtype=bool)
    for k, ds in enumerate(headers):
        origin = np.asarray(ds.ImagePositionPatient, dtype=float)
        dy, dx = (float(v) for v in ds.PixelSpacing)
        r, c = np.mgrid[0 : ds.Rows, 0 : ds.Columns]
        centres = np.c_[origin[0] + c.ravel() * dx, origin[1] + r.ravel() * dy]
        for contour in contours:
            if abs(contour[0, 2] - origin[2]) < 0.01:
                inside = points_in_poly(centres, contour[:, :2]).reshape(r.shape)
                expected[k] ^= inside
    got = imports.import_rtstruct(cat, row, RTUTILS / "rt.dcm", name="rt")
    mask = got["ROI-1"].labels.values
    np.testing.assert_array_equal(mask, expected)
    assert mask[0, 162:189, 162:189].sum() == 0  # the hole is kept
    assert mask[0, 152:201, 152].all() and mask[0, 152:201, 200].all()  # inside the outer one
    # rt-utils wrote its own frame of reference but references this series: noted, not refused
    assert any("references this series itself" in n for n in got["ROI-1"].notes)
    # any-overlap keeps the boundary ring: a superset, one voxel wider each side
    wide = imports.import_rtstruct(cat, row, RTUTILS / "rt.dcm", boundary="overlap")["ROI-1"]
    assert (wide.labels.values >= mask).all()
    assert wide.labels.values.sum() > mask.sum()


# -- what is refused, and how -------------------------------------------------------------------
def test_wrong_kind_of_file_is_refused_with_the_file_named(dcmqi_ct, rtutils_ct, tmp_path) -> None:
    _, cat, row = dcmqi_ct
    ct_slice = DCMQI / "image" / "01.dcm"
    with pytest.raises(NotARoiFile, match=r"01\.dcm.*not a DICOM SEG") as err:
        imports.import_seg(cat, row, ct_slice)
    assert isinstance(err.value, DicomError) and "import_rtstruct" in str(err.value)
    with pytest.raises(NotARoiFile, match="not an RTSTRUCT"):
        imports.import_rtstruct(cat, row, DCMQI / "liver.dcm")
    with pytest.raises(NotARoiFile, match="DICOM file, not a NIfTI"):
        imports.import_mask(cat, row, ct_slice)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not DICOM at all\n" * 10)
    for importer in (imports.import_seg, imports.import_rtstruct):
        with pytest.raises(UnreadableRoi, match=r"junk\.dcm: not a readable DICOM file"):
            importer(cat, row, junk)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes((DCMQI / "liver.dcm").read_bytes()[:5000])
    with pytest.raises(UnreadableRoi, match=r"truncated\.dcm"):
        imports.import_seg(cat, row, truncated)


def test_other_patient_or_frame_of_reference_is_refused(dcmqi_ct, rtutils_ct) -> None:
    _, cat, row = rtutils_ct
    with pytest.raises(ReferenceMismatch, match=r"frame of reference.*patient '99000'"):
        imports.import_seg(cat, row, DCMQI / "liver.dcm", name="liver")
    assert "liver" not in list_labels(cat, row)
    _, cat2, row2 = dcmqi_ct
    with pytest.raises(ReferenceMismatch, match="PHANTOM_EXAMPLE"):
        imports.import_rtstruct(cat2, row2, RTUTILS / "rt.dcm")


def test_empty_result_is_an_error_and_nothing_is_stored(rtutils_ct, tmp_path) -> None:
    _, cat, row = rtutils_ct
    volume = voxelhub.open_series(row, catalog=cat)
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(volume.shape[::-1], np.uint8), nifti_affine(volume)), empty)
    with pytest.raises(EmptyLabels, match="no labelled voxel"):
        imports.import_mask(cat, row, empty, name="empty")
    # a mask far away from the volume: non-empty file, empty once on the volume's grid
    away = tmp_path / "away.nii.gz"
    affine = nifti_affine(volume).copy()
    affine[:3, 3] += 5000.0
    nib.save(nib.Nifti1Image(np.ones((8, 8, 2), np.uint8), affine), away)
    with pytest.raises(EmptyLabels):
        imports.import_mask(cat, row, away, name="away")
    assert not {"empty", "away"} & set(list_labels(cat, row))


def test_nifti_without_orientation_is_refused(rtutils_ct, tmp_path) -> None:
    _, cat, row = rtutils_ct
    volume = voxelhub.open_series(row, catalog=cat)
    image = nib.Nifti1Image(np.ones(volume.shape[::-1], np.uint8), None)
    image.header.set_qform(None, code=0)
    image.header.set_sform(None, code=0)
    path = tmp_path / "no_orientation.nii"
    nib.save(image, path)
    assert nib.load(path).header["qform_code"] == 0
    with pytest.raises(NoOrientation, match="no orientation") as err:
        imports.import_mask(cat, row, path, name="lost")
    assert isinstance(err.value, GeometryError)
    assert "lost" not in list_labels(cat, row)


def test_intensity_image_is_not_taken_for_labels(rtutils_ct, tmp_path) -> None:
    _, cat, row = rtutils_ct
    volume = voxelhub.open_series(row, catalog=cat)
    hu = np.asarray(volume.values)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), nifti_affine(volume)), path)
    with pytest.raises(NotLabels, match="negative values"):
        imports.import_mask(cat, row, path, name="hu")
    shifted = tmp_path / "ct_shifted.nii.gz"
    positive = (hu - hu.min()).astype(np.uint16)
    nib.save(nib.Nifti1Image(positive.transpose(2, 1, 0), nifti_affine(volume)), shifted)
    with pytest.raises(NotLabels, match="intensity image"):
        imports.import_mask(cat, row, shifted, name="hu")
    assert "hu" not in list_labels(cat, row)


def test_fractional_seg_is_thresholded_at_the_stated_default(dcmqi_ct) -> None:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    root, cat, row = dcmqi_ct
    sources = [pydicom.dcmread(p) for p in sorted((DCMQI / "image").iterdir())]
    for ds in sources:
        if not ds.get("SpecificCharacterSet"):  # dcmqi's CT has an empty one
            del ds.SpecificCharacterSet
    rng = np.random.default_rng(4)
    probability = np.zeros((len(sources), 512, 512), dtype=np.float32)
    probability[:, 200:300, 150:260] = rng.random((len(sources), 100, 110), dtype=np.float32)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=probability,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="tumour probability",
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name="test", version="1", family=codes.DCM.ArtificialIntelligence
                ),
            )
        ],
        series_instance_uid=generate_uid(),
        series_number=101,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="VoxelHub tests",
        manufacturer_model_name="test_roi_real",
        software_versions="0",
        device_serial_number="1",
        max_fractional_value=255,
    )
    path = root / "fractional.dcm"
    seg.save_as(path)
    stored = np.rint(probability * 255) / 255  # what the SEG holds
    volume = voxelhub.open_series(row, catalog=cat)
    assert np.asarray(volume.attrs["affine_lps"])[2, 2] > 0  # axial, slices going up
    order = np.argsort([float(d.ImagePositionPatient[2]) for d in sources])
    for threshold in (0.5, 0.8):
        got = imports.import_seg(cat, row, path, threshold=threshold)["seg"]
        assert any("FRACTIONAL" in n and f"{threshold:g}" in n for n in got.notes)
        expected = stored[order] >= threshold - 1e-6
        np.testing.assert_array_equal(got.labels.values.astype(bool), expected)
