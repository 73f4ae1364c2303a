"""NIfTI / NRRD masks, DICOM SEG and RTSTRUCT land on the volume's exact grid (oblique too)."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

import voxelhub
from tests.dicom_factory import random_orientation, write_series
from voxelhub.roi import imports, read_labels
from voxelhub.roi.errors import NotLabels
from voxelhub.store.volume import nifti_affine

SHAPE = (14, 30, 26)


@pytest.fixture(scope="module")
def oblique(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("roi_imports")
    series = write_series(
        root / "in",
        slices=SHAPE[0],
        rows=SHAPE[1],
        columns=SHAPE[2],
        rotation=random_orientation(np.random.default_rng(11)),
        slice_step=2.0,
        seed=11,
    )
    voxelhub.ingest(root / "in", root / "store", progress=False)
    cat = voxelhub.open_catalog(root / "store")
    row = cat.series().iloc[0]
    volume = voxelhub.open_series(row, catalog=cat)
    np.testing.assert_allclose(volume.attrs["affine_lps"], series.affine, atol=1e-4)
    yield root, series, cat, row, volume
    cat.close()


def _box() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[3:9, 8:21, 5:15] = 1
    mask[5:7, 2:6, 18:24] = 2
    return mask


def test_nifti_on_the_same_grid_is_copied_as_is(oblique, caplog) -> None:
    root, _, cat, row, volume = oblique
    path = root / "same.nii.gz"
    nib.save(nib.Nifti1Image(_box().transpose(2, 1, 0), nifti_affine(volume)), path)
    with caplog.at_level(logging.INFO, logger="voxelhub.roi"):
        got = imports.import_mask(cat, row, path, name="nifti-same", names={1: "a", 2: "b"})
    assert not got.resampled
    assert "copied as it is" in got.notes[0]
    np.testing.assert_array_equal(read_labels(cat, row, "nifti-same").values, _box())
    assert got.stored is not None and got.stored.names == {1: "a", 2: "b"}


def test_nrrd_on_another_grid_is_resampled_nearest_and_says_so(oblique, caplog) -> None:
    root, _, cat, row, volume = oblique
    # the same boxes on a grid twice as fine in-plane: every volume voxel centre hits a source
    # voxel of the same box
    fine = np.repeat(np.repeat(_box(), 2, axis=1), 2, axis=2)
    affine = np.asarray(volume.attrs["affine_lps"], dtype=float).copy()
    affine[:3, 3] -= (affine[:3, 0] + affine[:3, 1]) / 4  # centre of the first 2×2 block
    affine[:3, :2] /= 2
    image = sitk.GetImageFromArray(fine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    image.SetDirection(tuple(float(v) for v in (affine[:3, :3] / spacing).ravel()))
    path = root / "fine.nrrd"
    sitk.WriteImage(image, str(path))
    with caplog.at_level(logging.WARNING, logger="voxelhub.roi"):
        got = imports.import_mask(cat, row, path)
    assert got.resampled
    assert "nearest neighbour" in got.notes[0]
    assert "nearest neighbour" in caplog.text
    np.testing.assert_array_equal(got.labels.values, _box())
    assert got.labels.chunks is not None  # resampled lazily, chunk by chunk


def _write_seg(path: Path, files: list[Path], pixels: np.ndarray, new_uids: bool) -> None:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in files]  # spatial order
    for ds in sources:  # the patient / study module attributes a SEG copies (type 2 here)
        for keyword in ("PatientSex", "StudyTime", "ReferringPhysicianName", "StudyID"):
            setattr(ds, keyword, "")
        ds.AccessionNumber = ""
        if new_uids:  # another copy of the series (e.g. de-identified elsewhere)
            ds.SOPInstanceUID = generate_uid()
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=label,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, label in ((1, "liver"), (2, "lesion"))
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="VoxelHub tests",
        manufacturer_model_name="factory",
        software_versions="0",
        device_serial_number="1",
    )
    seg.save_as(path)


def test_seg_matched_by_referenced_instances(oblique) -> None:
    root, series, cat, row, _ = oblique
    path = root / "seg.dcm"
    _write_seg(path, series.files, _box(), new_uids=False)
    got = imports.import_seg(cat, row, path, name="seg")["seg"]
    assert not got.resampled
    assert "by referenced SOP Instance UID" in got.notes[0]
    assert got.names == {1: "liver", 2: "lesion"}
    np.testing.assert_array_equal(read_labels(cat, row, "seg").values, _box())


def test_seg_of_another_copy_is_placed_by_frame_positions(oblique) -> None:
    root, series, cat, row, _ = oblique
    path = root / "seg_other_uids.dcm"
    _write_seg(path, series.files, _box(), new_uids=True)
    got = imports.import_seg(cat, row, path)["seg"]
    assert "position along the slice normal" in got.notes[0]
    assert not got.resampled
    np.testing.assert_array_equal(got.labels.values, _box())


def _contour(points_xyz: np.ndarray, affine: np.ndarray) -> Dataset:
    lps = (affine @ np.c_[points_xyz, np.ones(len(points_xyz))].T)[:3].T
    item = Dataset()
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(lps)
    item.ContourData = [f"{v:.6f}" for v in lps.ravel()]
    return item


def _square(x0: float, x1: float, y0: float, y1: float, z: int) -> np.ndarray:
    """Corners just outside voxel centres x0..x1, y0..y1 (so exactly those are inside)."""
    return np.array(
        [
            [x0 - 0.4, y0 - 0.4, z],
            [x1 + 0.4, y0 - 0.4, z],
            [x1 + 0.4, y1 + 0.4, z],
            [x0 - 0.4, y1 + 0.4, z],
        ]
    )


def test_rtstruct_contours_are_rasterised_on_the_oblique_grid(oblique) -> None:
    root, series, cat, row, _ = oblique
    affine = series.affine
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.StudyInstanceUID = series.study_uid
    ds.SeriesInstanceUID = generate_uid()
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = series.series_uid
    ref_study = Dataset()
    ref_study.RTReferencedSeriesSequence = Sequence([ref_series])
    ref_frame = Dataset()
    ref_frame.RTReferencedStudySequence = Sequence([ref_study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref_frame])
    rois = []
    for number, label in ((1, "box"), (2, "ring")):
        roi = Dataset()
        roi.ROINumber = number
        roi.ROIName = label
        rois.append(roi)
    ds.StructureSetROISequence = Sequence(rois)
    box = Dataset()
    box.ReferencedROINumber = 1
    box.ContourSequence = Sequence(
        [_contour(_square(5, 14, 8, 20, z), affine) for z in range(3, 9)]
    )
    ring = Dataset()
    ring.ReferencedROINumber = 2
    ring.ContourSequence = Sequence(
        [
            _contour(_square(2, 22, 2, 26, 11), affine),
            _contour(_square(8, 15, 9, 18, 11), affine),  # inner contour: a hole
        ]
    )
    ds.ROIContourSequence = Sequence([box, ring])
    path = root / "rtstruct.dcm"
    ds.save_as(path, enforce_file_format=True)

    got = imports.import_rtstruct(cat, row, path, name="rt")
    assert set(got) == {"box", "ring"}
    expected_box = np.zeros(SHAPE, dtype=bool)
    expected_box[3:9, 8:21, 5:15] = True
    np.testing.assert_array_equal(got["box"].labels.values, expected_box)
    expected_ring = np.zeros(SHAPE, dtype=bool)
    expected_ring[11, 2:27, 2:23] = True
    expected_ring[11, 9:19, 8:16] = False
    np.testing.assert_array_equal(got["ring"].labels.values, expected_ring)
    assert not any("references series" in n for n in got["box"].notes)
    np.testing.assert_array_equal(read_labels(cat, row, "rt-ring").values, expected_ring)


def test_fractional_masks_are_refused(oblique) -> None:
    root, _, cat, row, volume = oblique
    path = root / "prob.nii.gz"
    data = np.full(SHAPE[::-1], 0.5, dtype=np.float32)
    nib.save(nib.Nifti1Image(data, nifti_affine(volume)), path)
    with pytest.raises(NotLabels, match="fractional"):
        imports.import_mask(cat, row, Path(path))


def test_contours_through_voxel_centres_boundary_rules(oblique) -> None:
    """Contours traced through voxel centres (as rt-utils and most exporters write them): the
    overlap rule keeps the whole boundary ring, the centre rule only the interior for sure."""
    from voxelhub.roi.rtstruct import rasterise

    _, series, _, _, volume = oblique
    affine = series.affine

    def lps(points_xy: list[tuple[float, float]], z: int) -> np.ndarray:
        xyz = np.array([[x, y, z, 1.0] for x, y in points_xy])
        return (affine @ xyz.T)[:3].T

    square = lps([(4, 5), (15, 5), (15, 20), (4, 20)], 6)
    diamond = lps([(13, 8), (20, 15), (13, 22), (6, 15)], 9)  # R = 7 about (13, 15)
    centre, _ = rasterise([square, diamond], volume, boundary="centre")
    overlap, _ = rasterise([square, diamond], volume, boundary="overlap")
    z, y, x = np.indices(SHAPE)
    inside_square = (z == 6) & (x >= 4) & (x <= 15) & (y >= 5) & (y <= 20)
    inside_diamond = (z == 9) & (np.abs(x - 13) + np.abs(y - 15) <= 7)
    np.testing.assert_array_equal(overlap, inside_square | inside_diamond)
    # centres exactly on a contour fall on either side with the rounding of the oblique
    # transform: the centre rule keeps every centre strictly inside, never one outside
    strictly = ((z == 6) & (x > 4) & (x < 15) & (y > 5) & (y < 20)) | (
        (z == 9) & (np.abs(x - 13) + np.abs(y - 15) < 7)
    )
    assert (centre >= strictly).all() and (centre <= overlap).all()
    assert centre.sum() < overlap.sum()
