"""Acquisition facts: checked against dcm2niix's reference output on real data, then on synthetic
headers for each vendor's tags and for damaged values.

The oracles are the ``Ref/`` folders next to the real series: dcm2niix's BIDS sidecars, its
.bval/.bvec and its NIfTI volumes. Synthetic headers are real pydicom Datasets; most of them are
written to bytes and read back, so private tags arrive as a real file would give them.
"""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage, generate_uid

from voxelhub.dicom.acquisition import (
    Diffusion,
    asl_label,
    ge_pepolar_mode,
    ge_pepolar_reversed,
    philips_scale_slope,
    read_diffusion,
    sidecar,
)

# --- the BIDS acquisition block against dcm2niix's sidecars ---------------------------------

FIRST_FILES = {
    "mr_ge_fmri_classic": "axial_epi_fmri_interleaved_i_to_s-00001.dcm",
    "mr_ge_epi_pepolar": "001.dcm",
    "mr_uih_dti_mosaic": "00000001.dcm",
}

# Keys this module deliberately computes differently from dcm2niix, per Ref JSON name prefix.
DELIBERATE: dict[str, dict[str, str]] = {
    "*": {
        # dcm2niix appends components it infers from other tags (GE (0043,102F) = 0, "_M_" in
        # UIH's ImageType, ...) as "MAGNITUDE"; the sidecar reports (0008,0008) as written.
        "ImageType": "(0008,0008) verbatim, dcm2niix appends MAGNITUDE",
    },
    "1006_": {
        # dcm2niix writes GE pepolar reversed volumes as a separate series, number + 1000; the
        # header's SeriesNumber is 6 (the reversal is ge_pepolar_reversed()'s business).
        "SeriesNumber": "DICOM SeriesNumber, dcm2niix adds 1000 for reversed pepolar volumes",
    },
}

PHI_KEYS = {
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "DeviceSerialNumber",
    "StationName",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "AcquisitionDate",
    "StudyDate",
    "SeriesDate",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientWeight",
    "PatientAge",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
}

SIDECAR_KEYS = {
    "Modality",
    "MagneticFieldStrength",
    "ImagingFrequency",
    "Manufacturer",
    "ManufacturersModelName",
    "SoftwareVersions",
    "MRAcquisitionType",
    "SeriesDescription",
    "ProtocolName",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "SequenceName",
    "PulseSequenceName",
    "ImageType",
    "SeriesNumber",
    "SliceThickness",
    "SpacingBetweenSlices",
    "EchoTime",
    "RepetitionTime",
    "InversionTime",
    "FlipAngle",
    "EchoTrainLength",
    "PixelBandwidth",
    "PercentPhaseFOV",
    "PercentSampling",
    "AcquisitionMatrixPE",
    "ReconMatrixPE",
    "ParallelReductionFactorInPlane",
    "EffectiveEchoSpacing",
    "TotalReadoutTime",
    "InPlanePhaseEncodingDirectionDICOM",
    "PhaseEncodingAxis",
    "BodyPart",
    "PatientPosition",
    "NumberOfAverages",
}


def _header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def _same(mine: Any, ref: Any) -> bool:
    if isinstance(ref, bool) or not isinstance(ref, int | float):
        return bool(mine == ref)
    # dcm2niix prints numbers with %g: 6 significant digits
    return isinstance(mine, int | float) and math.isclose(mine, ref, rel_tol=1e-5, abs_tol=1e-12)


@pytest.mark.parametrize("series", sorted(FIRST_FILES))
def test_sidecar_equals_dcm2niix_ref(shared_dicom: Path, series: str) -> None:
    block = sidecar(_header(shared_dicom / series / FIRST_FILES[series]))
    refs = sorted((shared_dicom / series / "Ref").glob("*.json"))
    assert refs
    for ref_path in refs:
        ref = json.loads(ref_path.read_text())
        skip = dict(DELIBERATE["*"])
        for prefix, keys in DELIBERATE.items():
            if ref_path.name.startswith(prefix):
                skip.update(keys)
        compared = sorted(set(block) & set(ref) - set(skip))
        wrong = {k: (block[k], ref[k]) for k in compared if not _same(block[k], ref[k])}
        assert not wrong, f"{ref_path.name}: {wrong}"
        # not vacuous: the readout times dcm2niix computes and the bulk of the block are compared
        assert len(compared) >= 25, compared
        assert "TotalReadoutTime" in compared
        assert "ReconMatrixPE" in compared and "AcquisitionMatrixPE" in compared
        for key in skip:  # a deliberate difference is still a difference, not a missing key
            if key in ref:
                assert key in block


def test_sidecar_ge_readout_rule_values(shared_dicom: Path) -> None:
    """GE EES/TRT (dcm2niix >= v1.0.20260416): interpolated 72 -> 128 lines keep ESP per line."""
    fmri = sidecar(_header(shared_dicom / "mr_ge_fmri_classic" / FIRST_FILES["mr_ge_fmri_classic"]))
    assert fmri["EffectiveEchoSpacing"] == pytest.approx(388e-6)
    assert fmri["TotalReadoutTime"] == pytest.approx(63 * 388e-6)
    pepolar = sidecar(_header(shared_dicom / "mr_ge_epi_pepolar" / "001.dcm"))
    assert (pepolar["AcquisitionMatrixPE"], pepolar["ReconMatrixPE"]) == (72, 128)
    assert pepolar["EffectiveEchoSpacing"] == pytest.approx(500e-6)
    assert pepolar["TotalReadoutTime"] == pytest.approx(127 * 500e-6)
    uih = sidecar(_header(shared_dicom / "mr_uih_dti_mosaic" / "00000001.dcm"))
    assert uih["ReconMatrixPE"] == 64  # one 64x64 tile of the 256x320 VFRAME mosaic
    assert uih["ImagingFrequency"] == pytest.approx(128.17606)  # UIH writes Hz


@pytest.mark.parametrize("series", sorted(FIRST_FILES))
def test_sidecar_is_not_identifying_and_typed(shared_dicom: Path, series: str) -> None:
    block = sidecar(_header(shared_dicom / series / FIRST_FILES[series]))
    assert not set(block) & PHI_KEYS
    assert set(block) <= SIDECAR_KEYS, set(block) - SIDECAR_KEYS
    text_keys = {
        "Modality",
        "Manufacturer",
        "ManufacturersModelName",
        "SoftwareVersions",
        "MRAcquisitionType",
        "SeriesDescription",
        "ProtocolName",
        "ScanningSequence",
        "SequenceVariant",
        "ScanOptions",
        "SequenceName",
        "PulseSequenceName",
        "InPlanePhaseEncodingDirectionDICOM",
        "PhaseEncodingAxis",
        "BodyPart",
        "PatientPosition",
    }
    for key, value in block.items():
        if key == "ImageType":
            assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif key in text_keys:
            assert isinstance(value, str) and value
        else:
            assert isinstance(value, int | float) and not isinstance(value, bool), key
            assert math.isfinite(value) and value > 0, key
    for key in ("SeriesNumber", "AcquisitionMatrixPE", "ReconMatrixPE"):
        assert isinstance(block[key], int)


def test_sidecar_enhanced_reads_functional_groups(shared_dicom: Path) -> None:
    """Siemens XA10 Enhanced: TR/TE/flip in the shared groups, BWPPPE and PAT in private items.

    Values as dcm2niix v1.0.20260724 writes them for this file.
    """
    block = sidecar(
        _header(shared_dicom / "mr_enhanced_multiframe" / "Siemens" / "XA10" / "6_1.dcm")
    )
    assert block["Manufacturer"] == "Siemens"
    assert block["ScanningSequence"] == "EP"  # (0021,105A), public (0018,0020) is absent in XA
    assert block["ScanOptions"] == "PFP\\FS"
    assert block["EffectiveEchoSpacing"] == pytest.approx(1 / (24.414 * 64))
    assert block["TotalReadoutTime"] == pytest.approx(63 / (24.414 * 64))
    for key in ("EchoTime", "RepetitionTime", "FlipAngle", "PixelBandwidth"):
        assert key in block


# --- UIH diffusion against dcm2niix's bval/bvec --------------------------------------------


def test_uih_diffusion_matches_ref_bval_bvec(shared_dicom: Path) -> None:
    """b exactly as Ref/*.bval; gradients as Ref/*.bvec under dcm2niix's UIH convention.

    Verified mapping: dcm2niix's bvec = (g0, -g1, g2) of the raw (0065,1037) vector ``g``.
    siemensPhilipsCorrectBvecs() negates only y for its row flip and does not rotate UIH vectors.
    But ``g`` is in the patient frame (LPS): the scanner's table Grad_AP.csv, on the image axes,
    gives ``g = [r c n] @ csv`` to 1e-6 on this 1.75-degree oblique series. So the
    frame-correct FSL bvec ``(g.r, -(g.c), g.n)`` differs from dcm2niix's by the obliquity.
    """
    folder = shared_dicom / "mr_uih_dti_mosaic"
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 17
    bval_tokens = (folder / "Ref" / "dti_tra_dir16_AP_9_134431.bval").read_text().split()
    bvec = np.loadtxt(folder / "Ref" / "dti_tra_dir16_AP_9_134431.bvec")
    table = np.loadtxt(folder / "Ref" / "Grad_AP.csv", delimiter=",")
    assert bvec.shape == (3, 17) and table.shape == (16, 3)
    correct_vs_ref = []
    for i, path in enumerate(files):
        ds = _header(path)
        found = read_diffusion(ds)
        assert found is not None
        assert found.source == "UIH (0065,1009)/(0065,1037)"
        assert found.frame == "patient"
        assert f"{found.b_value:g}" == bval_tokens[i]  # dcm2niix writes b with %g
        if i == 0:  # nominal b0 (b = 1.25, vector 0,0,0): no direction
            assert found.gradient is None
            assert np.allclose(bvec[:, 0], 0.0)
            continue
        assert found.gradient is not None
        g = np.array(found.gradient)
        assert np.allclose([g[0], -g[1], g[2]], bvec[:, i], atol=1e-3)
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        r, c = iop[:3], iop[3:]
        n = np.cross(r, c)
        rotation = np.column_stack([r, c, n])  # image axes -> patient (LPS)
        assert np.allclose(rotation.T @ g, table[i - 1], atol=1e-6)  # g is patient-frame
        correct_vs_ref.append(np.abs(np.array([g @ r, -(g @ c), g @ n]) - bvec[:, i]).max())
    # documents dcm2niix's approximation on this oblique series (up to ~0.03 per component)
    assert 0.01 < max(correct_vs_ref) < 0.05


# --- GE epi_pepolar against dcm2niix's forward/reversed volumes -----------------------------


def test_ge_pepolar_reversed_against_ref_volumes(shared_dicom: Path) -> None:
    """Mode 2 (rev-fwd): temporal positions 1 and 3 (indices 0, 2) are reversed.

    dcm2niix's NIfTI voxel (i, j, k) is DICOM (column i, row rows-1-j, slice k): it flips rows.
    So a DICOM volume (rows, cols, z) is ``ref[:, ::-1, :].transpose(1, 0, 2)``. The reversed
    volumes equal Ref/1006 (in order) after flipping each slice's rows back; the forward ones
    equal Ref/6 as stored.
    """
    folder = shared_dicom / "mr_ge_epi_pepolar"
    by_time: dict[int, list[tuple[float, np.ndarray]]] = {}
    mode = None
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        if mode is None:
            mode = ge_pepolar_mode(ds)
        z = float(ds.ImagePositionPatient[2])
        by_time.setdefault(int(ds.TemporalPositionIdentifier), []).append((z, ds.pixel_array))
    assert mode == 2
    assert sorted(by_time) == [1, 2, 3, 4]
    forward = np.asanyarray(nib.load(folder / "Ref" / "6_FM_cv12_2_3mm.nii").dataobj)
    reversed_ = np.asanyarray(nib.load(folder / "Ref" / "1006_FM_cv12_2_3mm.nii").dataobj)
    assert forward.shape == reversed_.shape == (128, 128, 60, 2)
    next_ref = {True: 0, False: 0}
    for position in sorted(by_time):
        slices = sorted(by_time[position], key=lambda item: item[0])
        assert len(slices) == 60
        volume = np.stack([pixels for _, pixels in slices], axis=-1)
        index = position - 1  # 0-based, temporal order
        is_reversed = ge_pepolar_reversed(mode, index)
        ref = reversed_ if is_reversed else forward
        expected = ref[:, ::-1, :, next_ref[is_reversed]].transpose(1, 0, 2)
        next_ref[is_reversed] += 1
        if is_reversed:
            assert np.array_equal(volume[::-1, :, :], expected)
            assert not np.array_equal(volume, expected)
        else:
            assert np.array_equal(volume, expected)
    assert next_ref == {True: 2, False: 2}


def test_ge_pepolar_rule() -> None:
    assert [ge_pepolar_reversed(0, i) for i in range(4)] == [False] * 4
    assert [ge_pepolar_reversed(1, i) for i in range(4)] == [True] * 4
    assert [ge_pepolar_reversed(2, i) for i in range(4)] == [True, False, True, False]
    assert [ge_pepolar_reversed(3, i) for i in range(4)] == [False, True, False, True]
    assert not ge_pepolar_reversed(2, -1)
    assert not ge_pepolar_reversed(7, 0)


def test_ge_real_series_are_not_diffusion(shared_dicom: Path) -> None:
    """GE writes b = 0 in (0043,1039) for fMRI too; that is not a diffusion fact."""
    fmri = _header(shared_dicom / "mr_ge_fmri_classic" / FIRST_FILES["mr_ge_fmri_classic"])
    assert read_diffusion(fmri) is None
    assert ge_pepolar_mode(fmri) is None
    assert read_diffusion(_header(shared_dicom / "mr_ge_epi_pepolar" / "001.dcm")) is None


# --- Philips scale slope on a real Enhanced file ----------------------------------------------


def test_philips_scale_slope_per_frame(shared_dicom: Path) -> None:
    """FP = DV / (RS * SS): for the B0 field-map frames RS * SS = 1, so FP is DV in Hz."""
    ds = _header(shared_dicom / "mr_enhanced_multiframe" / "Philips" / "IM_0027_fMAP.dcm")
    frames = ds.PerFrameFunctionalGroupsSequence
    magnitude, field_map = frames[0], frames[40]
    assert philips_scale_slope(ds, magnitude) == pytest.approx(8.448640073766e-06)
    slope = philips_scale_slope(ds, field_map)
    assert slope == pytest.approx(4.095000267)
    rs = float(field_map.PixelValueTransformationSequence[0].RescaleSlope)
    assert rs * slope == pytest.approx(1.0, abs=1e-6)
    assert philips_scale_slope(ds) is None  # not at the top level of this file
    assert asl_label(magnitude) is None  # (2005,1429) is present but empty
    # Philips writes b = 0 into every image, in the frame's (2005,140F) item; dcm2niix keeps it
    found = read_diffusion(ds, magnitude)
    assert found == Diffusion(0.0, None, "patient", "Philips (2001,1003)")


# --- synthetic headers -------------------------------------------------------------------


def _write(ds: Dataset, implicit: bool = False) -> bytes:
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _roundtrip(ds: Dataset, implicit: bool = False) -> Dataset:
    """Write ``ds`` as a DICOM file and read it back (private tags arrive as from a real file)."""
    return pydicom.dcmread(io.BytesIO(_write(ds, implicit)), stop_before_pixels=True)


def _damaged(ds: Dataset, *elements: tuple[int, str, bytes]) -> Dataset:
    """``ds`` written as explicit VR with raw elements appended, as a damaged file carries them.

    pydicom converts them only when they are read. Only VRs with a 2-byte length are used.
    """
    data = _write(ds)
    for tag, vr, value in elements:
        data += struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
        data += struct.pack("<H", len(value)) + value
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def _mr(manufacturer: str | None = None, pe: str = "COL") -> Dataset:
    ds = Dataset()
    ds.Modality = "MR"
    if manufacturer is not None:
        ds.Manufacturer = manufacturer
    ds.InPlanePhaseEncodingDirection = pe
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    return ds


def _close(found: Diffusion | None, b: float, gradient: tuple[float, float, float] | None) -> bool:
    if found is None or not math.isclose(found.b_value, b, abs_tol=1e-6):
        return False
    if gradient is None or found.gradient is None:
        return gradient is None and found.gradient is None
    return bool(np.allclose(found.gradient, np.array(gradient) / np.linalg.norm(gradient)))


@pytest.mark.parametrize("implicit", [False, True])
def test_public_classic(implicit: bool) -> None:
    ds = _mr("SIEMENS")
    ds.DiffusionBValue = 1000.0
    ds.DiffusionGradientOrientation = [0.0, 0.6, 0.8]
    found = read_diffusion(_roundtrip(ds, implicit))
    assert _close(found, 1000.0, (0.0, 0.6, 0.8))
    assert found is not None
    assert (found.frame, found.source) == ("patient", "(0018,9087)/(0018,9089)")
    b0 = _mr()
    b0.DiffusionBValue = 0.0
    assert _close(read_diffusion(_roundtrip(b0, implicit)), 0.0, None)


def _diffusion_item(b: float, vector: list[float] | None, directionality: str) -> Dataset:
    item = Dataset()
    item.DiffusionBValue = b
    item.DiffusionDirectionality = directionality
    if vector is not None:
        direction = Dataset()
        direction.DiffusionGradientOrientation = vector
        item.DiffusionGradientDirectionSequence = Sequence([direction])
    return item


def test_public_enhanced_per_frame_then_shared() -> None:
    ds = _mr("Philips Medical Systems")
    shared = Dataset()
    shared.MRDiffusionSequence = Sequence([_diffusion_item(500.0, [1.0, 0.0, 0.0], "DIRECTIONAL")])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frame = Dataset()
    frame.MRDiffusionSequence = Sequence([_diffusion_item(2000.0, [0, 0, 2.0], "DIRECTIONAL")])
    trace = Dataset()
    trace.MRDiffusionSequence = Sequence([_diffusion_item(2000.0, [0, 0, 1.0], "ISOTROPIC")])
    ds.PerFrameFunctionalGroupsSequence = Sequence([frame, trace, Dataset()])
    ds = _roundtrip(ds)
    frames = ds.PerFrameFunctionalGroupsSequence
    assert _close(read_diffusion(ds, frames[0]), 2000.0, (0.0, 0.0, 1.0))
    assert _close(read_diffusion(ds, frames[1]), 2000.0, None)  # trace: no direction
    assert _close(read_diffusion(ds, frames[2]), 500.0, (1.0, 0.0, 0.0))  # shared groups


@pytest.mark.parametrize("implicit", [False, True])
def test_siemens_private(implicit: bool) -> None:
    ds = _mr("SIEMENS")
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "IS", "1000")
    block.add_new(0x0E, "FD", [0.0, -0.6, 0.8])
    found = read_diffusion(_roundtrip(ds, implicit))
    assert _close(found, 1000.0, (0.0, -0.6, 0.8))
    assert found is not None
    assert (found.frame, found.source) == ("patient", "Siemens (0019,100C)/(0019,100E)")
    # a garbled CSA header does not hide (0019,100C/E)
    ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x10, "OB", b"SV10junk")
    assert _close(read_diffusion(_roundtrip(ds, implicit)), 1000.0, (0.0, -0.6, 0.8))


def test_siemens_real_csa_has_no_diffusion(shared_dicom: Path) -> None:
    """A real CSA header without B_value (an fMRI mosaic) is not diffusion."""
    ds = _header(shared_dicom / "mr_siemens_transfer_syntaxes" / "1.dcm")
    assert ds.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value[:4] == b"SV10"
    assert read_diffusion(ds) is None


def _ge(pe: str, b: str, vector: tuple[str, str, str], psd: str = "epi2") -> Dataset:
    ds = _mr("GE MEDICAL SYSTEMS", pe)
    acqu = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    acqu.add_new(0x9C, "LO", psd)
    for offset, value in zip((0xBB, 0xBC, 0xBD), vector, strict=True):
        acqu.add_new(offset, "DS", value)
    ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x39, "IS", [b, "8", "0", "0"])
    return ds


@pytest.mark.parametrize("implicit", [False, True])
def test_ge_private_image_frame(implicit: bool) -> None:
    """(0019,10BB/BC/BD) are (frequency, phase, slice); returned on the image axes."""
    col = read_diffusion(_roundtrip(_ge("COL", "1000001000", ("0.6", "0.0", "0.8")), implicit))
    assert _close(col, 1000.0, (-0.6, 0.0, 0.8))  # b mod 1e9; COL: (-f, -p, s)
    assert col is not None
    assert (col.frame, col.source) == ("image", "GE (0043,1039)")
    row = read_diffusion(_roundtrip(_ge("ROW", "1000", ("0.6", "0.0", "0.8")), implicit))
    assert _close(row, 1000.0, (0.0, 0.6, 0.8))  # ROW: (-p, f, s)
    # a shorter vector encodes a lower b: b |g|^2 rounded to 5 (geCorrectBvecs)
    scaled = read_diffusion(_roundtrip(_ge("COL", "1000", ("0.5", "0.5", "0.0")), implicit))
    assert _close(scaled, 500.0, (-1.0, -1.0, 0.0))
    b0 = read_diffusion(_roundtrip(_ge("COL", "0", ("0", "0", "0")), implicit))
    assert _close(b0, 0.0, None)
    # b = 0 from a non-diffusion PSD (fMRI) is no diffusion fact
    assert read_diffusion(_roundtrip(_ge("COL", "0", ("0", "0", "0"), "epiRT"))) is None


def test_ge_public_b_completed_by_private_vector() -> None:
    """GE RX27+ writes (0018,9087) without (0018,9089); the vector is still the private one."""
    ds = _ge("COL", "1000", ("0.0", "1.0", "0.0"))
    ds.DiffusionBValue = 1000.0
    found = read_diffusion(_roundtrip(ds))
    assert _close(found, 1000.0, (0.0, -1.0, 0.0))
    assert found is not None and found.frame == "image"


def _philips(b: float, vector: tuple[float, float, float]) -> Dataset:
    ds = _mr("Philips Medical Systems")
    ds.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(0x03, "FL", b)
    mr = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
    for offset, value in zip((0xB0, 0xB1, 0xB2), vector, strict=True):
        mr.add_new(offset, "FL", value)
    return ds


@pytest.mark.parametrize("implicit", [False, True])
def test_philips_private_patient_frame(implicit: bool) -> None:
    """(RL, AP, FH) are LPS (x, y, z) unchanged, as dcm2niix stores and corrects them."""
    found = read_diffusion(_roundtrip(_philips(1000.0, (0.6, -0.8, 0.0)), implicit))
    assert _close(found, 1000.0, (0.6, -0.8, 0.0))
    assert found is not None
    assert (found.frame, found.source) == ("patient", "Philips (2001,1003)")
    trace = read_diffusion(_roundtrip(_philips(1000.0, (0.0, 0.0, 0.0)), implicit))
    assert _close(trace, 1000.0, None)  # isotropic (trace/ADC) image
    b0 = read_diffusion(_roundtrip(_philips(0.0, (0.0, 0.0, 0.0)), implicit))
    assert _close(b0, 0.0, None)


def test_philips_creator_in_another_slot() -> None:
    """The creator block, not the slot, decides (dcm2niix remaps moved blocks)."""
    ds = _mr("Philips Medical Systems")
    ds.add_new(0x20010010, "LO", "Philips Imaging DD 002")
    ds.add_new(0x20010011, "LO", "PHILIPS IMAGING DD 001")
    ds.add_new(0x20011103, "FL", 700.0)
    ds.add_new(0x20011003, "FL", 99.0)  # DD 002's element, not a b-value
    assert _close(read_diffusion(_roundtrip(ds)), 700.0, None)


def test_canon_image_comments() -> None:
    ds = _mr("TOSHIBA_MEC", "COL")
    ds.ImageComments = "b=1000(0.6,0.0,0.8)"
    found = read_diffusion(_roundtrip(ds))
    # comment is (phase, frequency, slice): COL -> (-f, -p, s)
    assert _close(found, 1000.0, (0.0, -0.6, 0.8))
    assert found is not None
    assert (found.frame, found.source) == ("image", "Canon ImageComments")
    # with the public orientation the public tags win (patient frame)
    ds.DiffusionBValue = 1000.0
    ds.DiffusionGradientOrientation = [1.0, 0.0, 0.0]
    public = read_diffusion(_roundtrip(ds))
    assert public is not None and public.frame == "patient"
    assert _close(public, 1000.0, (1.0, 0.0, 0.0))
    # with (0018,9087) but no (0018,9089) the comment's vector completes it
    del ds.DiffusionGradientOrientation
    both = read_diffusion(_roundtrip(ds))
    assert _close(both, 1000.0, (0.0, -0.6, 0.8))
    assert both is not None and both.source == "(0018,9087)/(0018,9089) + Canon ImageComments"


def _uih(b: float, vector: list[float]) -> Dataset:
    ds = _mr("UIH")
    block = ds.private_block(0x0065, "Image Private Header", create=True)
    block.add_new(0x09, "FD", b)
    block.add_new(0x37, "FD", vector)
    return ds


@pytest.mark.parametrize("implicit", [False, True])
def test_uih_private(implicit: bool) -> None:
    # implicit VR: pydicom does not know UIH's tags, they arrive as raw bytes (UN)
    found = read_diffusion(_roundtrip(_uih(1000.0, [0.0, 0.6, 0.8]), implicit))
    assert _close(found, 1000.0, (0.0, 0.6, 0.8))
    assert found is not None
    assert (found.frame, found.source) == ("patient", "UIH (0065,1009)/(0065,1037)")
    # the creator name is generic: another vendor's "Image Private Header" is not read
    other = _uih(1000.0, [0.0, 0.6, 0.8])
    other.Manufacturer = "ACME"
    assert read_diffusion(_roundtrip(other, implicit)) is None


@pytest.mark.parametrize(("value", "label"), [("LABEL", "label"), ("CONTROL", "control")])
def test_philips_asl_label(value: str, label: str) -> None:
    ds = _mr("Philips Medical Systems")
    ds.private_block(0x2005, "Philips MR Imaging DD 005", create=True).add_new(0x29, "CS", value)
    assert asl_label(_roundtrip(ds)) == label
    public = _mr("SIEMENS")
    public.ASLContext = value
    assert asl_label(public) == label


def test_ge_pepolar_mode_synthetic() -> None:
    ds = _mr("GE MEDICAL SYSTEMS")
    acqu = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    acqu.add_new(0x9C, "LO", "research/ABCD/epi_pepolar")
    acqu.add_new(0xB3, "DS", "3.000000")
    assert ge_pepolar_mode(_roundtrip(ds)) == 3
    acqu[0x9C].value = "epiRT"
    assert ge_pepolar_mode(_roundtrip(ds)) is None


def test_philips_scale_slope_synthetic() -> None:
    ds = _mr("Philips Medical Systems")
    ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True).add_new(0x0E, "FL", 2.5)
    assert philips_scale_slope(_roundtrip(ds)) == pytest.approx(2.5)
    assert philips_scale_slope(_roundtrip(ds, implicit=True)) == pytest.approx(2.5)


# --- damaged values: None, never an exception ----------------------------------------------


def _garbage_cases() -> list[tuple[str, Dataset]]:
    cases: list[tuple[str, Dataset]] = []

    ds = _mr("SIEMENS")
    ds.add_new(0x00189087, "LO", "abc")  # wrong VR, text for a number
    cases.append(("public text b", ds))
    ds = _damaged(_mr("SIEMENS"), (0x00189087, "FD", b"\x01\x02\x03"))  # FD of 3 bytes
    cases.append(("public short FD", ds))
    ds = _mr("SIEMENS")
    ds.add_new(0x00189087, "FD", float("nan"))
    cases.append(("public NaN", ds))
    ds = _mr("SIEMENS")
    ds.add_new(0x00189087, "FD", -5.0)
    cases.append(("public negative b", ds))
    ds = _mr("SIEMENS")
    ds.add_new(0x00189087, "FD", None)
    cases.append(("public empty", ds))
    ds = _mr("SIEMENS")
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "LO", "b=lots")
    cases.append(("siemens text b", ds))
    ds = _mr("GE MEDICAL SYSTEMS")
    ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x39, "LO", ["x", "y"])
    cases.append(("ge text b", ds))
    ds = _mr("GE MEDICAL SYSTEMS")
    ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x39, "OB", b"\xff\xfe")
    cases.append(("ge binary b", ds))
    ds = _mr("Philips Medical Systems")
    ds.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(0x03, "LO", "")
    cases.append(("philips empty b", ds))
    ds = _mr("Philips Medical Systems")
    ds.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(0x03, "OB", b"\x00")
    cases.append(("philips 1-byte b", ds))
    ds = _mr("CANON_MEC")
    ds.ImageComments = "b=lots(1,2)"
    cases.append(("canon garbled comment", ds))
    ds = _mr("UIH")
    block = ds.private_block(0x0065, "Image Private Header", create=True)
    block.add_new(0x09, "LO", "n/a")
    cases.append(("uih text b", ds))
    ds = _damaged(
        _mr("UIH"),
        (0x00650010, "LO", b"Image Private Header"),
        (0x00651009, "FD", b"\x00\x00\x00"),
    )
    cases.append(("uih short FD", ds))
    return cases


@pytest.mark.parametrize(
    ("name", "ds"), _garbage_cases(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_garbage_gives_none(name: str, ds: Dataset) -> None:
    assert read_diffusion(ds) is None
    assert read_diffusion(ds, Dataset()) is None
    assert asl_label(ds) is None
    assert ge_pepolar_mode(ds) is None
    assert philips_scale_slope(ds) is None
    assert isinstance(sidecar(ds), dict)


def test_garbage_gradient_keeps_b() -> None:
    """A readable b with a garbled vector: the b stays, the direction is unknown."""
    ds = _mr("SIEMENS")
    ds.DiffusionBValue = 1000.0
    ds.add_new(0x00189089, "LO", "up\\down")
    assert _close(read_diffusion(ds), 1000.0, None)
    ge = _ge("COL", "1000", ("0", "0", "1"))
    ge.private_block(0x0019, "GEMS_ACQU_01").add_new(0xBB, "LO", "a")  # text, wrong VR
    assert _close(read_diffusion(_roundtrip(ge)), 1000.0, None)
    no_pe = _ge("COL", "1000", ("1", "0", "0"))
    del no_pe.InPlanePhaseEncodingDirection  # logical axes cannot be placed: direction unknown
    assert _close(read_diffusion(_roundtrip(no_pe)), 1000.0, None)
    uih = _uih(1000.0, [0.0, 1.0])  # two components
    assert _close(read_diffusion(_roundtrip(uih)), 1000.0, None)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_garbage_elsewhere_never_raises() -> None:
    ds = _mr("Philips Medical Systems")
    ds.EchoTime = "30"
    ds.add_new(0x00180087, "LO", "3T")
    ds.add_new(0x00080008, "CS", ["ORIGINAL", "PRIMARY"])
    mr = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
    mr.add_new(0x0E, "LO", "slope")
    ds.add_new(0x2005140F, "LO", "not a sequence")
    ds.PerFrameFunctionalGroupsSequence = Sequence([Dataset()])
    ds = _damaged(
        ds,
        (0x00180080, "DS", b"fast"),  # TR
        (0x00181310, "US", b"\x01\x00\x02"),  # AcquisitionMatrix, 3 bytes
        (0x00200011, "IS", b"six "),  # SeriesNumber
    )
    block = sidecar(ds)
    assert block["EchoTime"] == pytest.approx(0.03)
    assert block["ImageType"] == ["ORIGINAL", "PRIMARY"]
    for key in ("RepetitionTime", "AcquisitionMatrixPE", "SeriesNumber", "MagneticFieldStrength"):
        assert key not in block
    assert philips_scale_slope(ds, ds.PerFrameFunctionalGroupsSequence[0]) is None
    assert read_diffusion(ds, ds.PerFrameFunctionalGroupsSequence[0]) is None
    assert asl_label(ds) is None
    assert sidecar(Dataset()) == {}
    assert read_diffusion(Dataset()) is None
