"""SEG (written by highdicom) and RTSTRUCT written in the test onto the real tilted, irregular and
oblique series of ../shared/data/dicom, compared with an independent rasterisation.

The expected masks are built from the DICOM headers alone (each file's Image Position and
Orientation, sorted along the normal here), never from VoxelHub's geometry or importers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid
from skimage.measure import points_in_poly

import voxelhub
from voxelhub.roi import imports

CASES = {
    # folder: (flags the stored volume must carry, files to keep)
    "ct_philips_ingenuity_tilt": {"gantry_tilt"},
    "ct_ge_hispeed_gantry_tilt": {"gantry_tilt", "non_uniform_spacing"},
    "mr_ge_mprage_3d_t1": set(),
}


def _headers(folder: Path) -> list[pydicom.Dataset]:
    """The image files of a folder in spatial order (by position along their normal)."""
    out = []
    for path in sorted(folder.iterdir()):
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            continue
        if "ImagePositionPatient" in ds:
            ds.filename = str(path)
            out.append(ds)
    iop = np.asarray(out[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(out, key=lambda d: float(np.asarray(d.ImagePositionPatient, float) @ normal))


@pytest.fixture(scope="module", params=sorted(CASES))
def series(request, shared_dicom: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = shared_dicom / request.param
    root = tmp_path_factory.mktemp(request.param)
    report = voxelhub.ingest(folder, root / "store", progress=False)
    assert not report.failed
    cat = voxelhub.open_catalog(root / "store")
    rows = cat.series()
    assert len(rows) == 1
    row = rows.iloc[0]
    assert CASES[request.param] <= set(row["flags"])
    headers = _headers(folder)
    assert len(headers) == row["slices"]
    yield root, cat, row, headers
    cat.close()


def _pattern(headers: list[pydicom.Dataset]) -> np.ndarray:
    """Two segments with a different shape on every slice, on a third of the slices."""
    n, rows, cols = len(headers), int(headers[0].Rows), int(headers[0].Columns)
    out = np.zeros((n, rows, cols), dtype=np.uint8)
    r, c = np.mgrid[0:rows, 0:cols]
    for k in range(n // 3, 2 * n // 3 + 1):
        radius = 0.15 * min(rows, cols) * (1 + 0.3 * np.sin(k))
        out[k][((r - rows * 0.45) ** 2 + (c - cols * 0.55) ** 2) < radius**2] = 1
        out[k, int(rows * 0.2) : int(rows * 0.3) + k % 5, int(cols * 0.1) : int(cols * 0.25)] = 2
    return out


def _write_seg(path: Path, headers: list[pydicom.Dataset], labels: np.ndarray, new_uids: bool):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = []
    for ds in headers:
        full = pydicom.dcmread(ds.filename)
        for keyword in (  # type 2 patient / study attributes a SEG copies
            "PatientName",
            "PatientBirthDate",
            "PatientSex",
            "StudyDate",
            "StudyTime",
            "ReferringPhysicianName",
            "StudyID",
            "AccessionNumber",
        ):
            if keyword not in full:
                setattr(full, keyword, "")
        if new_uids:
            full.SOPInstanceUID = generate_uid()
        # highdicom wants one orientation; the MR's differ in the last digit from file to file
        full.ImageOrientationPatient = headers[0].ImageOrientationPatient
        sources.append(full)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, label in ((1, "round"), (2, "bar"))
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="VoxelHub tests",
        manufacturer_model_name="test_roi_tilted",
        software_versions="0",
        device_serial_number="1",
        omit_empty_frames=True,
    )
    seg.save_as(path)


@pytest.mark.parametrize("new_uids", [False, True], ids=["by-reference", "by-position"])
def test_highdicom_seg_on_real_tilted_and_oblique_series(series, new_uids) -> None:
    root, cat, row, headers = series
    expected = _pattern(headers)
    path = root / f"seg_{new_uids}.dcm"
    _write_seg(path, headers, expected, new_uids)
    got = imports.import_seg(cat, row, path)["seg"]
    how = "position along the slice normal" if new_uids else "referenced SOP Instance UID"
    assert how in got.notes[0]
    assert not got.resampled
    assert got.names == {1: "round", 2: "bar"}
    np.testing.assert_array_equal(got.labels.values, expected)


def _contour(ds: pydicom.Dataset, cr: np.ndarray) -> Dataset:
    """A closed planar contour through (column, row) pixel coordinates of one image."""
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    dy, dx = (float(v) for v in ds.PixelSpacing)
    lps = (
        np.asarray(ds.ImagePositionPatient, dtype=float)
        + np.outer(cr[:, 0] * dx, iop[:3])
        + np.outer(cr[:, 1] * dy, iop[3:])
    )
    item = Dataset()
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(lps)
    item.ContourData = [f"{v:.4f}" for v in lps.ravel()]
    return item


def _polygons(k: int, rows: int, cols: int) -> list[np.ndarray]:
    """An irregular outer polygon and a hole, in (column, row) pixels, never through a centre."""
    angles = np.linspace(0, 2 * np.pi, 23, endpoint=False)
    radius = 0.25 * min(rows, cols) * (1 + 0.25 * np.cos(3 * angles + k))
    outer = np.c_[cols * 0.5 + radius * np.cos(angles), rows * 0.5 + radius * np.sin(angles)]
    hole = np.c_[
        cols * 0.5 + 0.07 * cols * np.cos(angles), rows * 0.5 + 0.05 * rows * np.sin(angles)
    ]
    return [outer + 0.013, hole + 0.021]


def test_rtstruct_on_real_tilted_and_oblique_series(series) -> None:
    root, cat, row, headers = series
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    r, c = np.mgrid[0:rows, 0:cols]
    centres = np.c_[c.ravel(), r.ravel()]
    expected = np.zeros((len(headers), rows, cols), dtype=bool)
    # centres within 0.01 pixel of a contour: the headers' positions are rounded, so which side
    # they fall on is not defined to that precision
    ambiguous = np.zeros_like(expected)
    contours = []
    for k in range(len(headers) // 4, 3 * len(headers) // 4):
        for polygon in _polygons(k, rows, cols):
            expected[k] ^= points_in_poly(centres, polygon).reshape(rows, cols)
            middle = polygon.mean(axis=0)
            size = np.linalg.norm(polygon - middle, axis=1).min()
            grown, shrunk = (middle + (polygon - middle) * (1 + s * 0.01 / size) for s in (1, -1))
            ambiguous[k] |= (
                points_in_poly(centres, grown) != points_in_poly(centres, shrunk)
            ).reshape(rows, cols)
            contours.append(_contour(headers[k], polygon))
    assert ambiguous.sum() < 1e-3 * expected.sum()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.PatientID = headers[0].get("PatientID", "")
    ds.FrameOfReferenceUID = headers[0].FrameOfReferenceUID
    roi = Dataset()
    roi.ROINumber = 7
    roi.ROIName = "ring"
    roi.ReferencedFrameOfReferenceUID = headers[0].FrameOfReferenceUID
    ds.StructureSetROISequence = Sequence([roi])
    item = Dataset()
    item.ReferencedROINumber = 7
    item.ContourSequence = Sequence(contours)
    ds.ROIContourSequence = Sequence([item])
    path = root / "rtstruct.dcm"
    ds.save_as(path, enforce_file_format=True)
    for boundary in ("centre", "overlap"):
        got = imports.import_rtstruct(cat, row, path, boundary=boundary)["ring"]
        mask = got.labels.values
        if boundary == "centre":
            np.testing.assert_array_equal(mask[~ambiguous], expected[~ambiguous])
        else:  # one boundary ring more, never less, never further than one voxel
            from scipy.ndimage import binary_dilation

            assert (mask >= expected).all() and mask.sum() > expected.sum()
            ring = np.zeros((3, 3, 3), dtype=bool)
            ring[1] = True
            grown = binary_dilation(expected, ring) | binary_dilation(~expected, ring)
            assert (mask <= (expected | grown)).all()


def _descriptions(n: int):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=f"part-{i}",
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for i in range(1, n + 1)
    ]


def test_labelmap_seg(series) -> None:
    """A LABELMAP SEG (frame values are segment numbers) on the real tilted series."""
    import highdicom as hd

    root, cat, row, headers = series
    expected = _pattern(headers)
    sources = []
    for ds in headers:
        full = pydicom.dcmread(ds.filename)
        for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate"):
            if keyword not in full:
                setattr(full, keyword, "")
        for keyword in ("StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
            if keyword not in full:
                setattr(full, keyword, "")
        full.ImageOrientationPatient = headers[0].ImageOrientationPatient
        sources.append(full)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=expected,
        segmentation_type=hd.seg.SegmentationTypeValues.LABELMAP,
        segment_descriptions=_descriptions(2),
        series_instance_uid=generate_uid(),
        series_number=101,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="VoxelHub tests",
        manufacturer_model_name="test_roi_tilted",
        software_versions="0",
        device_serial_number="1",
    )
    path = root / "labelmap.dcm"
    seg.save_as(path)
    got = imports.import_seg(cat, row, path)["seg"]
    assert got.names == {1: "part-1", 2: "part-2"}
    np.testing.assert_array_equal(got.labels.values, expected)


RTUTILS = Path(__file__).resolve().parents[2] / ".venv-rtutils" / "bin" / "python"

RTUTILS_WRITE = r"""
import json, sys, numpy as np
from rt_utils import RTStructBuilder
series, masks, out = sys.argv[1], sys.argv[2], sys.argv[3]
data = np.load(masks)
rt = RTStructBuilder.create_new(dicom_series_path=series)
order = json.loads(data["uids"].tobytes().decode())
index = [order.index(str(ds.SOPInstanceUID)) for ds in rt.series_data]  # rt-utils' slice order
rt.add_roi(mask=data["mask"][index].transpose(1, 2, 0), name="blob", approximate_contours=False)
rt.save(out)
"""


def _rasterise_by_headers(path: Path, headers: list[pydicom.Dataset]):
    """Centre-inside masks of an RTSTRUCT's contours, each placed with the header of the slice
    it lies in (not with VoxelHub's geometry); the centres within 0.01 pixel of a contour; and
    how many contours lie on no slice (further than half the least gap between slices)."""
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    iop = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    heights = np.array([np.asarray(h.ImagePositionPatient, float) @ normal for h in headers])
    r, c = np.mgrid[0:rows, 0:cols]
    centres = np.c_[c.ravel(), r.ravel()]
    inside = np.zeros((len(headers), rows, cols), dtype=bool)
    ambiguous = np.zeros_like(inside)
    tolerance = np.diff(np.sort(heights)).min() / 2  # the documented rule: half the least gap
    skipped = 0
    for item in pydicom.dcmread(path).ROIContourSequence[0].ContourSequence:
        points = np.asarray(item.ContourData, dtype=float).reshape(-1, 3)
        k = int(np.argmin(abs(heights - (points @ normal).mean())))
        if abs(heights[k] - (points @ normal).mean()) > tolerance:
            skipped += 1
            continue
        h = headers[k]
        offset = points - np.asarray(h.ImagePositionPatient, float)
        row_iop = np.asarray(h.ImageOrientationPatient, float)
        spacing = np.asarray(h.PixelSpacing, float)  # (between rows, between columns)
        polygon = np.c_[offset @ row_iop[:3] / spacing[1], offset @ row_iop[3:] / spacing[0]]
        inside[k] ^= points_in_poly(centres, polygon).reshape(rows, cols)
        middle = polygon.mean(axis=0)
        size = np.linalg.norm(polygon - middle, axis=1).min()
        grown, shrunk = (middle + (polygon - middle) * (1 + s * 0.01 / size) for s in (1, -1))
        ambiguous[k] |= (points_in_poly(centres, grown) != points_in_poly(centres, shrunk)).reshape(
            rows, cols
        )
    return inside, ambiguous, skipped


def test_rtutils_rtstruct_on_real_tilted_and_oblique_series(series, tmp_path: Path) -> None:
    """An RTSTRUCT written by rt-utils itself (contours through the boundary pixels' centres),
    against an independent rasterisation of its points; without a tilt, the overlap rule gives
    back the very mask rt-utils was given."""
    import shutil
    import subprocess

    if not RTUTILS.exists():
        pytest.fail(f"{RTUTILS} is missing: `make rtutils` makes it (requirements/rtutils.txt)")
    _, cat, row, headers = series
    images = tmp_path / "images"  # the image files only (rt-utils reads every file it finds)
    images.mkdir()
    for n, ds in enumerate(headers):
        shutil.copy(ds.filename, images / f"{n:04d}.dcm")
    mask = _pattern(headers) == 1
    uids = [str(ds.SOPInstanceUID) for ds in headers]
    np.savez(
        tmp_path / "mask.npz", mask=mask, uids=np.frombuffer(json.dumps(uids).encode(), np.uint8)
    )
    out = tmp_path / "rt-utils.dcm"
    done = subprocess.run(
        [str(RTUTILS), "-c", RTUTILS_WRITE, str(images), str(tmp_path / "mask.npz"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert pydicom.dcmread(out).Manufacturer == "Qurit"  # written by rt-utils, not by us

    overlap = imports.import_rtstruct(cat, row, out, boundary="overlap")["blob"].labels.values
    got = imports.import_rtstruct(cat, row, out, boundary="centre")["blob"]
    centre = got.labels.values
    # independently, from the points in the file and each slice's own header
    expected, ambiguous, skipped = _rasterise_by_headers(out, headers)
    np.testing.assert_array_equal(centre.astype(bool)[~ambiguous], expected[~ambiguous])
    if skipped:  # never silently: the import says how many contours it could not place
        assert f"{skipped} contour(s) lie between or outside the volume's slices" in got.notes[0]
        assert (expected & ~ambiguous).sum() > 0
    else:
        assert not got.notes
        assert (expected & ~ambiguous).sum() > 0.5 * mask.sum()
    assert (overlap >= centre).all() and overlap.sum() > centre.sum()
    if "gantry_tilt" not in row["flags"]:
        # rt-utils' own model of the grid is right here: the mask comes back voxel for voxel
        np.testing.assert_array_equal(overlap.astype(bool), mask)
    # On a gantry-tilted stack rt-utils places slice k's contour at the first slice's position
    # plus k slice spacings along the normal: it ignores the tilt's in-plane shift, so contours
    # are displaced by k x table step x sin(tilt), and on the irregular GE stack most lie between
    # slices.  VoxelHub puts them where the file says and counts those on no slice, which is
    # what the independent rasterisation above checks.
