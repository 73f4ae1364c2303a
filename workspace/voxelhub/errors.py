"""One exception per failure kind, so callers can react to what went wrong.

Every message names what was wrong, where (file, series UID, tag), and what to do.
"""

from __future__ import annotations


class VoxelHubError(Exception):
    """Base class of every error VoxelHub raises on purpose."""


class DicomError(VoxelHubError):
    """A DICOM file could not be read or is not an image VoxelHub can convert."""

    def __init__(self, message: str, *, path: str | None = None, tag: str | None = None) -> None:
        self.path = path
        self.tag = tag
        where = ", ".join(
            x for x in (f"file {path}" if path else "", f"tag {tag}" if tag else "") if x
        )
        super().__init__(f"{message} ({where})" if where else message)


class GeometryError(VoxelHubError):
    """A series has geometry that cannot be represented as asked (tilt, mixed orientation, gaps)."""


class DeidentificationError(VoxelHubError):
    """De-identification could not be applied safely (bad secret file, unsupported element)."""


class StoreError(VoxelHubError):
    """The volume store could not be read or written (missing, half-written, checksum mismatch)."""


class CatalogError(VoxelHubError):
    """The catalog is missing, unreachable, or does not agree with the store."""


class NotFound(CatalogError):
    """A project, study, series or volume asked for is not in the catalog."""


class SettingLocked(CatalogError):
    """A project setting that cannot change now: de-identification of a project holding data."""


class AccessDenied(VoxelHubError):
    """The caller is not allowed to see or change the requested data."""


class AuditError(VoxelHubError):
    """The audit log cannot be written or read safely (damaged chain, no permission)."""
