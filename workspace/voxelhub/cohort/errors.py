"""Why a cohort package is refused: one class per kind, each naming the project or object."""

from __future__ import annotations

from voxelhub.errors import VoxelHubError


class CohortError(VoxelHubError):
    """Base class of cohort export/import errors."""


class IdentifiableProject(CohortError):
    """Export from a project that is not de-identified (or encrypted with this site's key)."""


class IdentifiableData(CohortError):
    """A package (or a volume in it) that is not de-identified, for a de-identified project."""


class TamperedPackage(CohortError):
    """An object's SHA-256 differs from the manifest, or an object is missing or unlisted."""

    def __init__(self, message: str, *, obj: str) -> None:
        self.object = obj
        super().__init__(message)


class UnsupportedPackage(CohortError):
    """Not a VoxelHub cohort package, or a format version this VoxelHub cannot read."""


class ImportConflict(CohortError):
    """The target holds a different volume under the same UID (another cohort's, or edited)."""
