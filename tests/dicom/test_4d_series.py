"""Synthetic 4-D series (pydicom): every way the volumes of a series are told apart.

Each test writes the same positions several times with one distinguishing tag set the way a
scanner sets it, shuffles the files, ingests, and checks that ONE 4-D volume comes out with the
volumes in the right order (voxel for voxel) and the acquisition table right.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import voxelhub
from tests.dicom_factory import write_series

SLICES = 5
Tagger = Callable[[Dataset, int, int], None]


def _write_4d(folder: Path, volumes: int, tag: Tagger, *, renumber: bool = True) -> np.ndarray:
    """``volumes`` copies of one slice geometry, volume v tagged by ``tag(ds, v, k)``.

    Returns the expected (t, z, y, x) array.  Files are named in random order so that neither
    names nor directory order carry the answer.
    """
    series_uid, study_uid = generate_uid(), generate_uid()
    expected = []
    names = list(range(volumes * SLICES))
    random.Random(1).shuffle(names)
    for v in range(volumes):
        s = write_series(
            folder / f"v{v}",
            slices=SLICES,
            modality="MR",
            series_uid=series_uid,
            study_uid=study_uid,
            seed=100 + v,
        )
        expected.append(s.volume)
        for k, path in enumerate(s.files):
            ds = pydicom.dcmread(path)
            if renumber:
                ds.InstanceNumber = v * SLICES + k + 1
            tag(ds, v, k)
            ds.save_as(folder / f"f{names[v * SLICES + k]:03d}.dcm", enforce_file_format=True)
            path.unlink()
        (folder / f"v{v}").rmdir()
    return np.stack(expected)


def _ingest_one(folder: Path, store: Path) -> tuple[dict, voxelhub.Catalog]:
    report = voxelhub.ingest(folder, store, progress=False, workers=1)
    assert report.exit_code == 0, report.summary()
    cat = voxelhub.open_catalog(store)
    rows = cat.series()
    assert len(rows) == 1, rows[["split", "timepoints"]]
    return rows.iloc[0].to_dict(), cat


def _check(folder: Path, store: Path, expected: np.ndarray) -> object:
    row, cat = _ingest_one(folder, store)
    assert row["timepoints"] == expected.shape[0] and row["slices"] == SLICES
    volume = voxelhub.open_series(row, catalog=cat)
    assert volume.dims == ("t", "z", "y", "x")
    np.testing.assert_array_equal(volume.values, expected.astype(volume.dtype))
    cat.close()
    return volume


def test_temporal_position(tmp_path: Path) -> None:
    def tag(ds: Dataset, v: int, k: int) -> None:
        ds.TemporalPositionIdentifier = 3 - v  # acquired last-to-first in instance order
        ds.NumberOfTemporalPositions = 3

    expected = _write_4d(tmp_path / "in", 3, tag)
    volume = _check(tmp_path / "in", tmp_path / "store", expected[::-1])
    assert list(volume["volume_index"].values) == [0, 1, 2]


def test_trigger_time(tmp_path: Path) -> None:
    def tag(ds: Dataset, v: int, k: int) -> None:
        ds.TriggerTime = f"{100.0 * v:g}"
        ds.InstanceNumber = k * 4 + v + 1  # position-major numbering, as cardiac series often are

    expected = _write_4d(tmp_path / "in", 4, tag, renumber=False)
    volume = _check(tmp_path / "in", tmp_path / "store", expected)
    np.testing.assert_allclose(volume["t"].values, [0.0, 0.1, 0.2, 0.3])


def test_public_diffusion_tags(tmp_path: Path) -> None:
    gradients = [None, (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]

    def tag(ds: Dataset, v: int, k: int) -> None:
        ds.add_new((0x0018, 0x9087), "FD", 0.0 if v == 0 else 1000.0)
        if gradients[v] is not None:
            ds.add_new((0x0018, 0x9089), "FD", list(gradients[v]))

    expected = _write_4d(tmp_path / "in", 4, tag)
    volume = _check(tmp_path / "in", tmp_path / "store", expected)
    np.testing.assert_array_equal(volume["b_value"].values, [0, 1000, 1000, 1000])
    lps = volume.vh.gradients("lps")
    assert np.isnan(lps[0]).all()
    np.testing.assert_allclose(lps[1:], np.eye(3), atol=1e-9)
    # the synthetic series is axial with identity orientation: image axes equal LPS axes
    np.testing.assert_allclose(volume.vh.gradients("image")[1:], np.eye(3), atol=1e-9)


def test_philips_private_diffusion_tags(tmp_path: Path) -> None:
    def tag(ds: Dataset, v: int, k: int) -> None:
        ds.Manufacturer = "Philips Medical Systems"
        ds.add_new((0x2001, 0x0010), "LO", "Philips Imaging DD 001")
        ds.add_new((0x2001, 0x1003), "FL", 0.0 if v == 0 else 800.0)
        ds.add_new((0x2005, 0x0010), "LO", "Philips MR Imaging DD 001")
        ds.add_new((0x2005, 0x10B0), "FL", float(v == 1))
        ds.add_new((0x2005, 0x10B1), "FL", float(v == 2))
        ds.add_new((0x2005, 0x10B2), "FL", 0.0)

    expected = _write_4d(tmp_path / "in", 3, tag)
    volume = _check(tmp_path / "in", tmp_path / "store", expected)
    np.testing.assert_array_equal(volume["b_value"].values, [0, 800, 800])


def test_asl_label_control(tmp_path: Path) -> None:
    def tag(ds: Dataset, v: int, k: int) -> None:
        ds.Manufacturer = "Philips Medical Systems"
        ds.add_new((0x2005, 0x0014), "LO", "Philips MR Imaging DD 005")
        ds.add_new((0x2005, 0x1429), "CS", "LABEL" if v % 2 else "CONTROL")

    expected = _write_4d(tmp_path / "in", 4, tag)
    volume = _check(tmp_path / "in", tmp_path / "store", expected)
    assert list(volume["label"].values) == ["control", "label", "control", "label"]


def test_instance_order_alone(tmp_path: Path) -> None:
    expected = _write_4d(tmp_path / "in", 3, lambda ds, v, k: None)
    row, cat = _ingest_one(tmp_path / "in", tmp_path / "store")
    assert "volumes_by_instance_order" in row["flags"]
    assert "[volumes_by_instance_order]" in row["reasons"]
    np.testing.assert_array_equal(
        voxelhub.open_series(row, catalog=cat).values, expected.astype(np.uint16)
    )
    assert len(cat.series(flag="volumes_by_instance_order")) == 1
    cat.close()


def test_unequal_repetitions_are_refused_with_a_reason(tmp_path: Path) -> None:
    _write_4d(tmp_path / "in", 3, lambda ds, v, k: None)
    victim = sorted((tmp_path / "in").glob("*.dcm"))[0]
    victim.unlink()
    report = voxelhub.ingest(tmp_path / "in", tmp_path / "store", progress=False, workers=1)
    assert report.exit_code == 2
    assert not report.written
    reasons = {r["reason"] for r in report.rejected_files}
    assert len(reasons) == 1
    (reason,) = reasons
    assert "repeat unequally (2 to 3 times over 5 positions)" in reason
    summary = report.summary()
    # one grouped line for the 14 files, not one per file
    assert summary.count("repeat unequally") == 1 and "14 files" in summary


def test_echoes_stay_separate_volumes(tmp_path: Path) -> None:
    echoes = 2

    def tag(ds: Dataset, v: int, k: int) -> None:
        ds.EchoNumbers = v + 1
        ds.EchoTime = f"{5.0 * (v + 1):g}"

    _write_4d(tmp_path / "in", echoes, tag)
    report = voxelhub.ingest(tmp_path / "in", tmp_path / "store", progress=False, workers=1)
    assert len(report.written) == echoes and report.exit_code == 0
