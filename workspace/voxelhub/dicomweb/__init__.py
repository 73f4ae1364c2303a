"""Pull studies from any DICOMweb server into a project: ``voxelhub.dicomweb.pull(...)``, or
``voxelhub.dicomweb.pull_panel(store)`` in a notebook.

QIDO-RS finds the studies, WADO-RS brings their instances in parallel streams, each is checked
and staged atomically, the staged folder goes through the normal ingest.  Resumable: the same
pull started again fetches only what is missing.
"""

from voxelhub.dicomweb.errors import (
    AuthenticationFailed,
    EmptyQuery,
    PullBusy,
    PullError,
    PullIncomplete,
    QueryError,
    ServerError,
    ServerNotFound,
    ServerUnreachable,
    TooManyStudies,
)
from voxelhub.dicomweb.pull import PullReport, default_staging, pull
from voxelhub.dicomweb.query import StudyQuery
from voxelhub.dicomweb.server import Credentials


def __getattr__(name: str) -> object:
    """The notebook panel loads ipywidgets only when asked for."""
    if name in ("PullPanel", "pull_panel"):
        from voxelhub.dicomweb import panel

        return getattr(panel, name)
    raise AttributeError(name)


__all__ = [
    "AuthenticationFailed",
    "Credentials",
    "EmptyQuery",
    "PullBusy",
    "PullError",
    "PullIncomplete",
    "PullPanel",
    "PullReport",
    "QueryError",
    "ServerError",
    "ServerNotFound",
    "ServerUnreachable",
    "StudyQuery",
    "TooManyStudies",
    "default_staging",
    "pull",
    "pull_panel",
]
