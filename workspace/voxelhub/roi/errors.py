"""What can go wrong bringing a mask, SEG or RTSTRUCT onto a volume: one class per kind.

Every error names the file and says what to do.  Each one also derives from the general VoxelHub
class that fits (:class:`~voxelhub.errors.DicomError`, :class:`~voxelhub.errors.GeometryError`),
so ``except DicomError`` keeps working; the ROI classes let a caller react to the kind itself
(``except ReferenceMismatch`` to import anyway with ``check_reference=False``).  The highdicom or
pydicom exception that caused it stays attached as ``__cause__``.
"""

from __future__ import annotations

import os
from typing import Any

from voxelhub.errors import DicomError, GeometryError, VoxelHubError

__all__ = [
    "EmptyLabels",
    "NoOrientation",
    "NotARoiFile",
    "NotLabels",
    "PlacementError",
    "ReferenceMismatch",
    "RoiError",
    "UnreadableRoi",
]


class RoiError(VoxelHubError):
    """Base class: a mask, SEG or RTSTRUCT could not be imported onto a volume."""

    def __init__(self, message: str, *, path: Any = None, hint: str = "") -> None:
        self.path = os.fspath(path) if path is not None else None
        self.hint = hint
        text = f"{self.path}: {message}" if self.path else message
        super().__init__(f"{text}. {hint}" if hint else text)


class NotARoiFile(RoiError, DicomError):
    """The file is not the kind the importer takes (a CT slice given as a SEG, not DICOM …)."""

    def __init__(self, message: str, *, path: Any = None, hint: str = "") -> None:
        RoiError.__init__(self, message, path=path, hint=hint)
        self.tag = None


class UnreadableRoi(RoiError, DicomError):
    """The file is of the right kind but could not be decoded (damaged, unsupported encoding)."""

    def __init__(self, message: str, *, path: Any = None, hint: str = "") -> None:
        RoiError.__init__(self, message, path=path, hint=hint)
        self.tag = None


class ReferenceMismatch(RoiError):
    """The ROI was drawn in another frame of reference or on another patient than the volume."""


class PlacementError(RoiError, GeometryError):
    """The ROI's planes cannot be put on the volume's slices (not parallel, between slices …)."""


class NoOrientation(RoiError, GeometryError):
    """A NIfTI (or other) mask says nothing of where it lies in the patient."""


class NotLabels(RoiError, ValueError):
    """The array holds intensities or probabilities, not label values."""


class EmptyLabels(RoiError):
    """The import gave no labelled voxel at all: nothing is stored under that name."""


def read_roi_dicom(path: str | os.PathLike[str], kind: str) -> tuple[Any, str]:
    """``pydicom.dcmread`` of an ROI object, its failures turned into :class:`UnreadableRoi`
    naming the file; returns the dataset and the path as text.  ``kind``: "SEG", "RTSTRUCT"."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    where = os.fspath(path)
    try:
        return pydicom.dcmread(where), where
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError) as exc:
        raise UnreadableRoi(
            f"not a readable DICOM file ({type(exc).__name__}: {exc})",
            path=where,
            hint=f"Check that the file is a complete DICOM {kind} (not truncated, not a ZIP)",
        ) from exc
