"""What can go wrong talking to a DICOMweb server: one class per kind, each message says what
to do.  None of them ever carries a credential (URLs are shown without their user part)."""

from __future__ import annotations

from voxelhub.errors import VoxelHubError


class PullError(VoxelHubError):
    """Base class of ``voxelhub pull``'s errors."""


class QueryError(PullError):
    """The query itself is wrong (unknown attribute, malformed date range, no criterion)."""


class ServerUnreachable(PullError):
    """No HTTP answer: wrong host or port, server down, or a network in between."""


class AuthenticationFailed(PullError):
    """HTTP 401 or 403: the credentials are missing, wrong, or not allowed this data."""


class ServerNotFound(PullError):
    """HTTP 404: the URL is not the DICOMweb root, or the study went away meanwhile."""


class ServerError(PullError):
    """Any other HTTP failure, or an answer that is not DICOMweb."""


class EmptyQuery(PullError):
    """The QIDO-RS query matched no study (or no instance of the studies it matched)."""


class TooManyStudies(PullError):
    """The query matched more studies than the caller allowed (``max_studies``)."""


class PullIncomplete(PullError):
    """Some instances could not be fetched; what was fetched is kept for the next run."""


class PullBusy(PullError):
    """The same pull (server, query, project) is already running."""
