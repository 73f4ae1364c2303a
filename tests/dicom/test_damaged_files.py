"""Damaged files never stop an ingest: each becomes a rejected row, and the exit code says so.

Files are damaged the ways real archives are: an unknown value representation, a value
truncated by the end of the file, an element length that disagrees with its VR, bytes flipped
at random.  The healthy series beside them is always written.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import voxelhub
from tests.dicom_factory import write_series


def _healthy_and(tmp_path: Path, damage) -> Path:
    folder = tmp_path / "in"
    write_series(folder / "good", slices=6, seed=1)
    bad = write_series(folder / "bad", slices=4, seed=2, modality="MR")
    for path in bad.files:
        path.write_bytes(damage(path.read_bytes()))
    return folder


def _unknown_vr(data: bytes) -> bytes:
    # StudyInstanceUID (0020,000D) with the VR "Ui": pydicom raises NotImplementedError
    marker = b"\x20\x00\x0d\x00UI"
    assert marker in data
    return data.replace(marker, b"\x20\x00\x0d\x00Ui", 1)


def _truncated_value(data: bytes) -> bytes:
    # cut the file in the middle of SeriesDescription's value
    marker = b"\x08\x00\x3e\x10LO"
    at = data.index(marker)
    return data[: at + 10]


def _wrong_length(data: bytes) -> bytes:
    # Rows (0028,0010) is US: give it a length of 3 bytes instead of 2
    marker = b"\x28\x00\x10\x00US\x02\x00"
    at = data.index(marker)
    return data[:at] + b"\x28\x00\x10\x00US\x03\x00" + data[at + 8 :]


def _garbled_number(data: bytes) -> bytes:
    # an IS value that is no number: pydicom raises from inside when it converts it
    marker = b"\x20\x00\x13\x00IS"
    at = data.index(marker)
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    return data[: at + 8] + b"x" * length + data[at + 8 + length :]


@pytest.mark.parametrize(
    "damage",
    [_unknown_vr, _truncated_value, _wrong_length, _garbled_number],
    ids=lambda f: f.__name__,
)
def test_damaged_files_are_rejected_and_the_rest_written(tmp_path: Path, damage) -> None:
    folder = _healthy_and(tmp_path, damage)
    report = voxelhub.ingest(folder, tmp_path / "store", progress=False, workers=2)
    assert len(report.written) == 1, report.summary()
    bad = {str(p) for p in (folder / "bad").iterdir()}
    rejected = {r["source"] for r in report.rejected_files}
    skipped = set(report.non_dicom)
    assert bad <= rejected | skipped, report.summary()
    assert rejected, "a damaged DICOM file must be reported, not silently skipped"
    assert report.exit_code == 1
    assert all(r["reason"] for r in report.rejected_files)
    assert "Traceback" not in report.summary()


def test_unknown_vr_names_the_exception_and_tag(tmp_path: Path) -> None:
    folder = _healthy_and(tmp_path, _unknown_vr)
    report = voxelhub.ingest(folder, tmp_path / "store", progress=False, workers=1)
    reasons = {(r["reason"], r["tag"]) for r in report.rejected_files}
    assert len(reasons) == 1, reasons
    ((reason, tag),) = reasons
    assert "NotImplementedError" in reason and "Ui" in reason
    assert tag == "(0020,000D)"


@pytest.mark.parametrize("seed", range(6))
def test_random_byte_damage_never_aborts(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)

    def flip(data: bytes) -> bytes:
        buf = bytearray(data)
        header_end = data.index(b"\xe0\x7f\x10\x00")  # keep pixel data, damage the header
        for at in rng.integers(132, header_end, size=12):
            buf[at] = int(rng.integers(0, 256))
        return bytes(buf)

    folder = _healthy_and(tmp_path, flip)
    report = voxelhub.ingest(folder, tmp_path / "store", progress=False, workers=2)
    assert len(report.written) >= 1, report.summary()
    assert report.exit_code in (0, 1)
    bad = {str(p) for p in (folder / "bad").iterdir()}
    accounted = {r["source"] for r in report.rejected_files} | set(report.non_dicom)
    written_from_bad = bad - accounted
    # a damaged file is reported with a reason, or it was still readable and went into a
    # volume; never silently dropped
    if written_from_bad:
        assert len(report.written) == 2 or report.failed, report.summary()


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxelhub.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good"
    write_series(good, slices=4, seed=3)
    done = _cli("ingest", good, "--store", tmp_path / "s1", "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    again = _cli("ingest", good, "--store", tmp_path / "s1", "--quiet")
    assert again.returncode == 0 and "1 unchanged" in again.stdout

    mixed = _healthy_and(tmp_path / "mixed", _unknown_vr)
    partly = _cli("ingest", mixed, "--store", tmp_path / "s2", "--quiet")
    assert partly.returncode == 1, partly.stdout + partly.stderr
    assert "rejected 4 files" in partly.stdout and partly.stdout.count("NotImplementedError") == 1

    only_bad = tmp_path / "only_bad"
    bad = write_series(only_bad, slices=3, seed=4)
    for path in bad.files:
        path.write_bytes(_unknown_vr(path.read_bytes()))
    nothing = _cli("ingest", only_bad, "--store", tmp_path / "s3", "--quiet")
    assert nothing.returncode == 2, nothing.stdout + nothing.stderr
    assert "nothing was written" in nothing.stdout

    helped = _cli("ingest", "--help")
    assert "exit status:" in helped.stdout
    assert "0  every DICOM image was ingested" in helped.stdout
    assert "2  nothing was written" in helped.stdout
