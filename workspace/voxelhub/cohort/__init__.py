"""De-identified cohorts that travel between sites: ``export_cohort`` and ``import_cohort``.

A package is a folder (local or ``s3://``) with the volumes' OME-Zarr trees, their label
images and feature rows, and ``cohort.json``: the SHA-256 of every object, the
de-identification profile and options, and the provenance (see :mod:`voxelhub.cohort.package`).
"""

from voxelhub.cohort.errors import (
    CohortError,
    IdentifiableData,
    IdentifiableProject,
    ImportConflict,
    TamperedPackage,
    UnsupportedPackage,
)
from voxelhub.cohort.export import Exported, export_cohort
from voxelhub.cohort.importing import Imported, import_cohort

__all__ = [
    "CohortError",
    "Exported",
    "IdentifiableData",
    "IdentifiableProject",
    "ImportConflict",
    "Imported",
    "TamperedPackage",
    "UnsupportedPackage",
    "export_cohort",
    "import_cohort",
]
