"""The per-instance check on real files: every transfer syntax of the shared data passes, and
damage to native or compressed pixel data, or a header without pixel data, is named."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pydicom
import pytest

from tests.dicom_net.conftest import DICOM, REPO

sys.path.insert(0, str(REPO / "extensions"))

from voxelhub_dicom.checks import check_instance

SYNTAXES = sorted((DICOM / "mr_siemens_transfer_syntaxes").glob("*.dcm"))


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("path", SYNTAXES, ids=[p.name for p in SYNTAXES])
def test_whole_instances_pass_in_every_transfer_syntax(path: Path) -> None:
    assert check_instance(path.read_bytes()) is None


def test_the_shared_series_hold_compressed_and_native_files() -> None:
    syntaxes = {
        pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID for p in SYNTAXES
    }
    assert any(pydicom.uid.UID(s).is_compressed for s in syntaxes)
    assert any(not pydicom.uid.UID(s).is_compressed for s in syntaxes)


def _syntax(path: Path) -> pydicom.uid.UID:
    return pydicom.uid.UID(
        pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    )


@pytest.mark.parametrize(
    "path",
    [p for p in SYNTAXES if _syntax(p).is_compressed],
    ids=lambda p: _syntax(p).name,
)
def test_damaged_compressed_pixel_data_is_named(path: Path) -> None:
    ds = pydicom.dcmread(path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=frames))
    ds.PixelData = pydicom.encaps.encapsulate([frame[: len(frame) // 3 + 1]] * frames)
    reason = check_instance(_bytes(ds))
    assert reason is not None, "a cut codestream passed"
    assert reason.startswith(
        ("compressed pixel data does not decode", "truncated: compressed frame 1")
    ), reason


def test_truncated_native_pixel_data_and_cut_headers_are_named() -> None:
    path = sorted((DICOM / "ct_ge_hispeed_gantry_tilt").glob("*.dcm"))[0]
    data = path.read_bytes()
    ds = pydicom.dcmread(path)
    whole = len(ds.PixelData)
    ds.PixelData = ds.PixelData[: whole // 2]
    reason = check_instance(_bytes(ds))
    assert reason == (
        f"truncated: pixel data holds {whole // 2} of {whole} bytes "
        f"(1 frame(s) of {ds.Rows}x{ds.Columns}x1, {ds.BitsAllocated} bits)"
    )
    # cut inside the header, as a sender that does not re-parse would deliver it
    reason = check_instance(data[:2000])
    assert reason is not None, "a file cut at 2000 bytes passed"
    assert reason.startswith(("unreadable DICOM", "truncated", "corrupt")), reason
    assert check_instance(b"not DICOM at all").startswith("unreadable DICOM")  # type: ignore[union-attr]
