"""Ingest of folders holding SEG / RTSTRUCT next to their images, and of series whose slices
disagree on the study: nothing becomes a bogus image volume, nothing is silently lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import zarr
from pydicom.uid import generate_uid

import voxelhub
from tests.conftest import SHARED
from tests.dicom_factory import write_series
from voxelhub.roi import list_labels, read_labels

ROI = SHARED / "data" / "roi"
DCMQI = ROI / "dcmqi_ct3_liver"
RTUTILS = ROI / "rtutils_mock"
ORIENTED = ROI / "rtutils_oriented"


@pytest.fixture(scope="module", autouse=True)
def _roi_data() -> None:
    if not ROI.is_dir():
        pytest.fail(f"real ROI test data missing: {ROI}")


def _folder(tmp_path: Path, *files: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for f in files:
        shutil.copy(f, folder / f.name)
    return folder


def _nrrd(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    # dcmqi's label maps: axial, origin at the lowest slice, the volume's own grid (checked
    # voxel for voxel through the affines in test_roi_real.py)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_ct_with_its_segs_gives_one_volume_and_attached_labels(tmp_path) -> None:
    folder = _folder(
        tmp_path,
        *sorted((DCMQI / "image").iterdir()),
        DCMQI / "liver.dcm",
        DCMQI / "partial_overlaps.dcm",
    )
    report = voxelhub.ingest(folder, tmp_path / "store", progress=False)
    assert len(report.written) == 1 and not report.failed and not report.rejected_files
    assert report.exit_code == 0
    cat = voxelhub.open_catalog(tmp_path / "store")
    rows = cat.series()
    assert len(rows) == 1 and rows.iloc[0]["modality"] == "CT"  # no SEG "volume"
    row = rows.iloc[0]
    assert [item["status"] for item in report.labels] == ["attached", "attached"]
    by_kind = {Path(item["source"]).name: item for item in report.labels}
    liver = by_kind["liver.dcm"]["labels"][row["volume_uid"]]
    assert len(liver) == 1 and liver[0].startswith("seg-")
    np.testing.assert_array_equal(
        read_labels(cat, row, liver[0]).values, _nrrd(DCMQI / "liver_seg.nrrd")
    )
    parts = by_kind["partial_overlaps.dcm"]["labels"][row["volume_uid"]]
    assert len(parts) == 5  # overlapping segments: one mask each
    assert set(parts) | set(liver) <= set(list_labels(cat, row))
    assert "attached SEG" in report.summary()
    # ingesting again replaces the same label images, adds none
    again = voxelhub.ingest(folder, tmp_path / "store", progress=False)
    assert again.unchanged and [i["status"] for i in again.labels] == ["attached", "attached"]
    assert len(list_labels(cat, row)) == 6
    cat.close()


def test_seg_before_its_series_is_kept_and_attached_when_the_series_arrives(tmp_path) -> None:
    store = tmp_path / "store"
    early = voxelhub.ingest(_folder(tmp_path, DCMQI / "liver.dcm"), store, progress=False)
    assert [i["status"] for i in early.labels] == ["pending"]
    assert "kept, pending" in early.labels[0]["reason"]
    assert "pending SEG" in early.summary()
    assert len(list((store / "projects" / "default" / "pending-labels").iterdir())) == 2
    series = voxelhub.ingest(DCMQI / "image", store, progress=False)
    assert [i["status"] for i in series.labels] == ["attached"]
    assert series.labels[0]["source"].startswith("pending:")
    cat = voxelhub.open_catalog(store)
    row = cat.series().iloc[0]
    (name,) = list_labels(cat, row)
    np.testing.assert_array_equal(
        read_labels(cat, row, name).values, _nrrd(DCMQI / "liver_seg.nrrd")
    )
    assert [p.name for p in (store / "projects" / "default" / "pending-labels").iterdir()] == [
        "zarr.json"
    ]
    # the same SEG ingested again: the same label image, replaced
    late = voxelhub.ingest(tmp_path / "in", store, progress=False)
    assert [i["status"] for i in late.labels] == ["attached"] and late.exit_code == 0
    assert list_labels(cat, row) == [name]
    cat.close()


def test_rtutils_rtstruct_in_the_folder_is_attached_with_its_hole(tmp_path) -> None:
    folder = _folder(tmp_path, RTUTILS / "ct_1.dcm", RTUTILS / "ct_2.dcm", RTUTILS / "rt.dcm")
    report = voxelhub.ingest(folder, tmp_path / "store", progress=False)
    assert len(report.written) == 1 and not report.rejected_files
    cat = voxelhub.open_catalog(tmp_path / "store")
    row = cat.series().iloc[0]
    (names,) = report.labels[0]["labels"].values()
    assert len(names) == 1 and names[0].startswith("rtstruct-") and names[0].endswith("-ROI-1")
    mask = read_labels(cat, row, names[0]).values
    assert mask[0, 152:201, 152:201].sum() > 0 and mask[0, 162:189, 162:189].sum() == 0
    cat.close()


def test_other_patients_seg_in_the_folder_fails_and_is_listed(tmp_path) -> None:
    folder = _folder(tmp_path, RTUTILS / "ct_1.dcm", RTUTILS / "ct_2.dcm")
    # the dcmqi SEG made to reference the rt-utils series: its patient still differs
    seg = pydicom.dcmread(DCMQI / "liver.dcm")
    ct = pydicom.dcmread(RTUTILS / "ct_1.dcm")
    seg.ReferencedSeriesSequence[0].SeriesInstanceUID = ct.SeriesInstanceUID
    seg.save_as(folder / "foreign_seg.dcm")
    report = voxelhub.ingest(folder, tmp_path / "store", progress=False)
    assert [i["status"] for i in report.labels] == ["failed"]
    assert "patient" in report.labels[0]["reason"]
    assert any("SEG not attached" in r["reason"] for r in report.rejected_files)
    assert report.exit_code == 1
    cat = voxelhub.open_catalog(tmp_path / "store")
    assert list_labels(cat, cat.series().iloc[0]) == []
    cat.close()


def test_deidentified_project_attaches_without_storing_a_path(tmp_path) -> None:
    store = tmp_path / "store"
    # the SEG first: kept pending, de-identified
    early = voxelhub.ingest(
        _folder(tmp_path, DCMQI / "liver.dcm"), store, project="anon", deidentify=True,
        progress=False,
    )  # fmt: skip
    assert [i["status"] for i in early.labels] == ["pending"]
    (kept,) = [p for p in (store / "projects" / "anon" / "pending-labels").iterdir() if p.is_dir()]
    data = zarr.open_group(kept, mode="r")["bytes"][:].tobytes()
    assert b"99000" not in data and b"JANCT000" not in data  # patient ID and name replaced
    folder = tmp_path / "images"
    shutil.copytree(DCMQI / "image", folder)
    report = voxelhub.ingest(folder, store, project="anon", progress=False)
    assert [i["status"] for i in report.labels] == ["attached"]
    assert str(tmp_path) not in json.dumps(report.labels)
    cat = voxelhub.open_catalog(tmp_path / "store")
    row = cat.series().iloc[0]
    (name,) = list_labels(cat, row)
    np.testing.assert_array_equal(
        read_labels(cat, row, name).values, _nrrd(DCMQI / "liver_seg.nrrd")
    )
    attrs = zarr.open_group(tmp_path / "store" / row["store_path"] / "labels" / name).attrs
    stored = json.dumps(dict(attrs["voxelhub"]))
    assert str(tmp_path) not in stored and "liver.dcm" not in stored
    cat.close()


def test_three_study_oblique_slices_lose_nothing(tmp_path) -> None:
    report = voxelhub.ingest(ORIENTED, tmp_path / "store", progress=False)
    assert len(report.written) == 1 and not report.failed
    cat = voxelhub.open_catalog(tmp_path / "store")
    rows = cat.series()
    assert len(rows) == 1 and rows.iloc[0]["slices"] == 3
    volume = voxelhub.open_series(rows.iloc[0], catalog=cat)
    assert "mixed_study_uids" in volume.attrs["flags"]
    files = [pydicom.dcmread(ORIENTED / f"{i}.dcm") for i in range(3)]
    assert len({f.StudyInstanceUID for f in files}) == 3
    meta = zarr.open_group(tmp_path / "store" / rows.iloc[0]["store_path"]).attrs["voxelhub"]
    by_uid = {str(f.SOPInstanceUID): f for f in files}
    for k, uid in enumerate(meta["source_instance_uids"]):
        ds = by_uid[uid]
        expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(
            ds.get("RescaleIntercept", 0)
        )
        np.testing.assert_allclose(volume.values[k], expected, rtol=2e-7, atol=1e-6)  # float32
    cat.close()


def test_one_series_uid_from_two_patients_becomes_two_volumes(tmp_path) -> None:
    series_uid = generate_uid()
    for n, patient in enumerate(("PAT-A", "PAT-B")):
        write_series(
            tmp_path / "in" / patient,
            slices=4,
            series_uid=series_uid,
            study_uid=generate_uid(),
            patient_id=patient,
            seed=n,
            name_prefix=patient,
        )
    report = voxelhub.ingest(tmp_path / "in", tmp_path / "store", progress=False)
    assert len(report.written) == 2 and not report.failed
    cat = voxelhub.open_catalog(tmp_path / "store")
    rows = cat.series()
    assert len(rows) == 2 and sorted(rows["patient_id"]) == ["PAT-A", "PAT-B"]
    assert all(rows["slices"] == 4)
    assert all("study=" in s for s in rows["split"])
    cat.close()
