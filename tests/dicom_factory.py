"""Write small, valid DICOM series with known geometry and pixels (pydicom), for tests and benchmarks.

The expected volume and affine are returned with the files, so a test compares what VoxelHub
reads against ground truth, not against another reader.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid


@dataclass
class SyntheticSeries:
    """What was written: files in spatial order, the stored-value volume, and the geometry."""

    files: list[Path]
    volume: np.ndarray  # modality units (after rescale), (z, y, x) in spatial order
    affine: np.ndarray  # (x, y, z) index → LPS mm, third column = real slice step
    positions: np.ndarray
    series_uid: str
    study_uid: str


def random_orientation(rng: np.random.Generator) -> np.ndarray:
    """A random proper rotation: its first two columns are a valid ImageOrientationPatient."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 2] = -q[:, 2]
    return q


def write_series(
    folder: Path,
    *,
    slices: int = 12,
    rows: int = 32,
    columns: int = 40,
    pixel_spacing: tuple[float, float] = (0.7, 0.9),
    slice_step: float = 2.5,
    rotation: np.ndarray | None = None,
    origin: tuple[float, float, float] = (-100.0, -120.0, 30.0),
    tilt_degrees: float = 0.0,
    offsets: list[float] | None = None,
    drop: tuple[int, ...] = (),
    shuffle: bool = False,
    modality: str = "CT",
    intercept: float = -1024.0,
    slope: float = 1.0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    patient_id: str = "PAT-001",
    patient_name: str = "Doe^Jane",
    echo_number: int | None = None,
    seed: int = 0,
    name_prefix: str = "img",
) -> SyntheticSeries:
    """Write a series of single-frame images into ``folder``.

    ``offsets`` gives each slice's distance along the normal (default uniform ``slice_step``);
    ``tilt_degrees`` shears the stack (positions step along a direction tilted in the y-z plane
    of the image, as a CT gantry tilt does); ``drop`` removes slices (missing slices);
    ``shuffle`` scrambles file names and InstanceNumbers so neither follows space.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rot = np.eye(3) if rotation is None else rotation
    row_cos, col_cos, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    if offsets is None:
        offsets = [k * slice_step for k in range(slices)]
    step_dir = normal
    if tilt_degrees:
        t = np.radians(tilt_degrees)
        step_dir = np.cos(t) * normal + np.sin(t) * col_cos
    # a position's distance along the normal is `offset`; under tilt it moves along step_dir
    positions = np.array(
        [np.asarray(origin) + step_dir * (off / float(step_dir @ normal)) for off in offsets]
    )
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    dtype = np.int16 if modality == "CT" else np.uint16
    stored = rng.integers(0, 3000, size=(len(offsets), rows, columns)).astype(dtype)
    keep = [k for k in range(len(offsets)) if k not in drop]
    order = list(keep)
    if shuffle:
        random.Random(seed).shuffle(order)
    files: list[Path] = []
    by_slice: dict[int, Path] = {}
    for n, k in enumerate(order):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        sop_class = CTImageStorage if modality == "CT" else MRImageStorage
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.PatientID = patient_id
        ds.PatientName = patient_name
        ds.PatientBirthDate = "19700101"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyDate = "20240102"
        ds.SeriesDate = "20240102"
        ds.StudyDescription = "synthetic study"
        ds.SeriesDescription = "synthetic series"
        ds.InstitutionName = "Test Hospital"
        ds.Modality = modality
        ds.SeriesNumber = 3
        ds.InstanceNumber = n + 1 if shuffle else k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = [f"{pixel_spacing[0]:g}", f"{pixel_spacing[1]:g}"]
        ds.SliceThickness = f"{slice_step:g}"
        if tilt_degrees:
            ds.GantryDetectorTilt = f"{tilt_degrees:g}"
        if echo_number is not None:
            ds.EchoNumbers = echo_number
            ds.EchoTime = f"{5.0 * echo_number:g}"
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if dtype == np.int16 else 0
        if modality == "CT":
            ds.RescaleIntercept = f"{intercept:g}"
            ds.RescaleSlope = f"{slope:g}"
        ds.PixelData = stored[k].tobytes()
        path = folder / f"{name_prefix}{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        by_slice[k] = path
    volume = stored[keep].astype(np.float64) * (slope if modality == "CT" else 1.0)
    volume += intercept if modality == "CT" else 0.0
    step = positions[1] - positions[0] if len(positions) > 1 else normal * slice_step
    affine = np.eye(4)
    affine[:3, 0] = row_cos * pixel_spacing[1]
    affine[:3, 1] = col_cos * pixel_spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = positions[keep[0]]
    return SyntheticSeries(
        files=[by_slice[k] for k in keep],
        volume=volume,
        affine=affine,
        positions=positions[keep],
        series_uid=series_uid,
        study_uid=study_uid,
    )
