"""DICOMweb pulls run by the data service: a curator asks, the service fetches as its own account.

On the hub only the service's account may write the store, so ``voxelhub pull`` from a kernel
asks the service (``POST api/projects/<name>/pulls``), which runs the same pull
(:func:`voxelhub.dicomweb.pull`) in a worker thread, one at a time per project, into a private
(0700) staging folder.  The server must be on the site's allow-list
(``DataService.dicomweb_servers``): otherwise a curator could make the service fetch any URL
it can reach (SSRF).  Credentials for those servers come from the service's own 0600 file,
never from a request, and are never logged or stored.  The state of each pull is kept in the
service's memory (its report is for the session that asked).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from voxelhub.dicomweb import Credentials, PullError, PullReport, StudyQuery
from voxelhub.dicomweb.server import redact

QUERY_FIELDS = ("patient_id", "study_date", "modality", "accession", "study_uid", "extra")
SECRET_FIELDS = ("credentials", "user", "password", "token")


class PullRefused(ValueError):
    """The request cannot be taken; the message names the problem (a 400 at the service)."""


class BadPullRequest(PullRefused):
    """The body is not a pull request: not JSON, unknown fields, a malformed query."""


class CredentialsInRequest(PullRefused):
    """The request carries credentials: the service uses the site's, never a caller's."""


class ServerNotAllowed(PullRefused):
    """The DICOMweb server is not on the site's allow-list (a 403 at the service)."""


class BadCredentialsFile(ValueError):
    """The site's credentials file is unreadable, not JSON, or readable by others."""


def server_key(url: str) -> str:
    """How a DICOMweb root is compared with the allow-list: scheme and host in lower case,
    default ports made explicit, no user part, no trailing slash, no query or fragment."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    except ValueError:  # a port that is not a number
        port = -1
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class PullRequest:
    """What a curator asked for, checked."""

    url: str
    query: StudyQuery
    workers: int
    max_studies: int
    deidentify: bool | None

    def describe(self) -> str:
        return self.query.describe()


def parse_request(body: bytes, allowed: Iterable[str], max_workers: int) -> PullRequest:
    """The request body as a :class:`PullRequest`, or a :class:`PullRefused` naming the problem."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadPullRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadPullRequest('the body is a JSON object {"url": …, "query": {…}}')
    secret = sorted(set(data) & set(SECRET_FIELDS))
    if secret:  # never echoed: the values may be real secrets
        raise CredentialsInRequest(
            f"the request carries {secret}: the data service uses the credentials the site "
            "configured for each allowed server, never a caller's"
        )
    unknown = sorted(set(data) - {"url", "query", "workers", "max_studies", "deidentify"})
    if unknown:
        raise BadPullRequest(f"unknown field(s) {unknown}")
    url = data.get("url")
    if not isinstance(url, str) or not url:
        raise BadPullRequest("url (the DICOMweb root) is required")
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise CredentialsInRequest("the URL carries a user part: give the server's plain URL")
    if parts.query or parts.fragment:
        raise BadPullRequest("the URL is a DICOMweb root: no query (?…) or fragment (#…)")
    if server_key(url) not in {server_key(a) for a in allowed}:
        raise ServerNotAllowed(
            f"{redact(url)[:200]} is not one of the DICOMweb servers this site allows "
            "(DataService.dicomweb_servers)"
        )
    raw_query = data.get("query")
    if not isinstance(raw_query, dict):
        raise BadPullRequest("query is a JSON object of criteria (patient_id, study_date, …)")
    bad = sorted(set(raw_query) - set(QUERY_FIELDS))
    if bad:
        raise BadPullRequest(f"unknown query field(s) {bad}; known: {list(QUERY_FIELDS)}")
    extra = raw_query.get("extra") or {}
    values = [v for k, v in raw_query.items() if k != "extra"]
    if not isinstance(extra, dict) or not all(
        isinstance(v, str | None) for v in [*values, *extra.values()]
    ):
        raise BadPullRequest("query values are strings (extra: an object of strings)")
    query = StudyQuery(**{**raw_query, "extra": extra})
    try:
        query.filters()
    except PullError as exc:
        raise BadPullRequest(str(exc)) from None
    workers, max_studies = data.get("workers", 4), data.get("max_studies", 50)
    for name, value in (("workers", workers), ("max_studies", max_studies)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadPullRequest(f"{name} is a whole number of at least 1")
    deidentify = data.get("deidentify")
    if deidentify not in (None, True):
        raise BadPullRequest("deidentify is true or left out (the project's setting)")
    return PullRequest(redact(url), query, min(workers, max_workers), max_studies, deidentify)


def load_credentials(path: str) -> dict[str, Credentials]:
    """``{server key: Credentials}`` from the site's JSON file
    ``{"<url>": {"user": …, "password": …} | {"token": …}}``; it must be readable by its owner
    only (a file others may read is refused: its secrets may have leaked)."""
    if not path:
        return {}
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise BadCredentialsFile(f"DICOMweb credentials file {path}: {exc}") from None
    if st.st_mode & 0o077 or not stat.S_ISREG(st.st_mode):
        raise BadCredentialsFile(
            f"DICOMweb credentials file {path} is readable by others (mode "
            f"{st.st_mode & 0o777:o}): rotate its secrets and write it again with mode 0600"
        )
    if not isinstance(data, dict):
        raise BadCredentialsFile(f"DICOMweb credentials file {path}: not a JSON object")
    out = {}
    for url, entry in data.items():
        if not isinstance(entry, dict) or set(entry) - {"user", "password", "token"}:
            raise BadCredentialsFile(
                f"DICOMweb credentials file {path}: the entry of {redact(url)} is an object "
                'with "user" and "password", or "token"'
            )
        out[server_key(url)] = Credentials(entry.get("user"), entry.get("password"),
                                           entry.get("token"))  # fmt: skip
    return out


class PullState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass
class ServicePull:
    """One pull the service runs and, once it ends, its report."""

    id: str
    project: str
    user: str
    server: str
    created: str
    state: PullState = PullState.QUEUED
    done: int = 0
    total: int = 0
    error: str = ""
    """the kind of failure (a :mod:`voxelhub.dicomweb.errors` class name), when it failed"""
    message: str = ""
    report: dict[str, Any] | None = None
    """the :class:`~voxelhub.dicomweb.PullReport` as JSON (no staging path)"""
    exit_code: int = 2
    _query: str = field(default="", repr=False)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.pop("_query")
        out["state"] = self.state.value
        return out


def report_json(report: PullReport) -> dict[str, Any]:
    """The report for the caller: the service's private staging folder (in the ingest's paths
    and rejected files' sources) is named ``pull-staging``, never by its path."""
    out = dataclasses.asdict(report)
    staging, out["staging"] = report.staging, ""
    if not staging:
        return out
    text = json.dumps(out, default=str)
    return dict(json.loads(text.replace(json.dumps(staging)[1:-1], "pull-staging")))


PullInto = Callable[[PullRequest, str, Callable[[int, int], None]], PullReport]


class Pulls:
    """The service's pulls: a private staging folder, their state, one at a time per project."""

    def __init__(self, staging: str) -> None:
        self.staging = staging
        self._pulls: dict[str, ServicePull] = {}
        self._lock = threading.Lock()
        self._projects: dict[str, threading.Lock] = {}
        os.makedirs(staging, mode=0o700, exist_ok=True)
        os.chmod(staging, 0o700)

    def new(self, project: str, user: str, request: PullRequest) -> ServicePull:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        job = ServicePull(secrets.token_urlsafe(12), project, user, request.url, now)
        job._query = request.describe()
        with self._lock:
            self._pulls[job.id] = job
            self._projects.setdefault(project, threading.Lock())
        return job

    def get(self, pull_id: str) -> ServicePull | None:
        with self._lock:
            return self._pulls.get(pull_id)

    def run(self, job: ServicePull, request: PullRequest, pull_into: PullInto) -> PullState:
        """In a worker thread: wait for the project's previous pull, then pull; the outcome is
        in ``job`` and the state it ends in is returned, for the caller to set once the outcome
        is audited (so a client that sees it finished finds it in the trail).  Never raises."""

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        with self._projects[job.project]:
            job.state = PullState.RUNNING
            try:
                report = pull_into(request, job.project, progress)
            except PullError as exc:
                job.error, job.message = type(exc).__name__, str(exc)
                return PullState.FAILED
            except Exception as exc:  # reported, never a half-known state
                job.error = type(exc).__name__
                job.message = f"{type(exc).__name__}: {exc}"[:2000]
                return PullState.FAILED
            job.report = report_json(report)
            job.exit_code = report.exit_code
            job.done = job.total = report.instances
            summary = report.summary()
            job.message = (summary.replace(report.staging, "pull-staging") if report.staging
                           else summary)[:4000]  # fmt: skip
            return PullState.DONE if report.exit_code < 2 else PullState.FAILED


def audit_detail(job: ServicePull, withheld: bool) -> dict[str, Any]:
    """What a ``dicom.pull`` record says of a finished pull; a de-identified project's record
    names no study, instance or query (a query may hold a patient ID)."""
    detail: dict[str, Any] = {"pull": job.id, "server": job.server}
    report: Mapping[str, Any] = job.report or {}
    if report:
        ingest = report.get("ingest") or {}
        detail.update(
            studies=report["studies"],
            fetched=report["fetched"],
            resumed=report["resumed"],
            rejected=len(report["rejected"]),
            volumes=list(ingest.get("written", [])) + list(ingest.get("unchanged", [])),
        )
    if job.error:
        detail["error"] = job.error
    if not withheld:
        detail["query"] = job._query
    return detail
