"""``voxelhub pull``: QIDO-RS query → WADO-RS retrieval in parallel → checked → normal ingest.

Each instance is fetched on its own (one WADO-RS request per SOPInstanceUID, ``workers``
streams at once), checked like an instance arriving at the DICOM edge
(:func:`voxelhub.dicom.checks.check_dataset`: a truncated or corrupt instance is rejected with
its reason and never ingested), written atomically into the pull's staging folder and recorded
in its state file (:mod:`voxelhub.dicomweb.journal`).  When every instance is there, the folder
is ingested with :func:`voxelhub.ingest.ingest` (de-identified when the project is) and removed.
An interrupted pull started again with the same server, query and project finds the same folder
and fetches only what is missing; ingest is idempotent, so nothing is catalogued twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from voxelhub.dicomweb.errors import PullError, PullIncomplete
from voxelhub.dicomweb.journal import Entry, Journal, Outcome, instance_file_name, write_atomically
from voxelhub.dicomweb.query import InstanceRef, StudyQuery, plan_pull
from voxelhub.dicomweb.server import Credentials, Server

if TYPE_CHECKING:
    from voxelhub.ingest import IngestReport
    from voxelhub.service_catalog import ServiceCatalog

log = logging.getLogger(__name__)

STAGING_ENV = "VOXELHUB_PULL_STAGING"
# every transfer syntax as stored: nothing is transcoded (or decompressed) on the way
AS_STORED = (("application/dicom", "*"),)


def default_staging() -> Path:
    """``$VOXELHUB_PULL_STAGING``, else ``~/.cache/voxelhub/pulls`` (private to the user)."""
    env = os.environ.get(STAGING_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "voxelhub" / "pulls"


@dataclass
class PullReport:
    """What a pull did: instances matched, fetched now, already staged, rejected, failed."""

    url: str
    query: str
    project: str
    studies: int = 0
    instances: int = 0
    fetched: int = 0
    resumed: int = 0
    nbytes: int = 0
    seconds: float = 0.0
    rejected: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    ingest: IngestReport | None = None
    staging: str = ""

    @property
    def megabytes_per_second(self) -> float:
        return self.nbytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 all stored, 1 some instances rejected or refused by ingest, 2 nothing stored."""
        if self.ingest is None or self.ingest.exit_code == 2:
            return 2
        return 1 if self.rejected or self.ingest.exit_code == 1 else 0

    def summary(self) -> str:
        lines = [
            f"pull from {self.url} ({self.query}) into project {self.project}: "
            f"{self.studies} study(ies), {self.instances} instance(s): {self.fetched} fetched "
            f"now ({self.nbytes / 1e6:.1f} MB in {self.seconds:.1f} s, "
            f"{self.megabytes_per_second:.1f} MB/s), {self.resumed} already staged by an "
            f"earlier run, {len(self.rejected)} rejected"
        ]
        for item in self.rejected:
            lines.append(f"  rejected instance {item['sop']}: {item['reason']}")
        if self.ingest is not None:
            lines.append(self.ingest.summary())
        else:
            lines.append(f"  nothing ingested; the staged instances stay in {self.staging}")
        return "\n".join(lines)


def pull_folder(staging: Path, server: Server, query: StudyQuery, project: str) -> Path:
    """The pull's own folder: the same server, query and project always find the same one."""
    identity = "\n".join((server.url, query.canonical(), project))
    return staging / hashlib.sha256(identity.encode()).hexdigest()[:24]


def _fetch(server: Server, journal: Journal, ref: InstanceRef) -> Entry:
    """One instance: WADO-RS, checked, staged.  Network failures raise (the run retries it)."""
    from voxelhub.dicom.checks import check_dataset

    name = instance_file_name(ref.sop)
    if name is None:
        return Entry(ref.sop[:80], ref.series, Outcome.REJECTED, 0, "not a DICOM UID")
    try:
        with server.speaking(f"WADO-RS retrieval of instance {ref.sop}"):
            ds = server.client().retrieve_instance(
                ref.study, ref.series, ref.sop, media_types=AS_STORED
            )
    except PullError:
        raise
    except Exception as exc:  # pydicom could not parse the part: a damaged instance
        return Entry(
            ref.sop,
            ref.series,
            Outcome.REJECTED,
            0,
            f"unreadable DICOM: {type(exc).__name__}: {exc}"[:300],
        )
    problem = check_dataset(ds)
    if problem is None and str(ds.get("SOPInstanceUID", "")) != ref.sop:
        problem = f"the server sent instance {ds.get('SOPInstanceUID', '?')} instead"
    if problem is not None:
        return Entry(ref.sop, ref.series, Outcome.REJECTED, 0, problem)
    try:
        size = write_atomically(journal.instances, name, lambda f: ds.save_as(f))
    except OSError as exc:  # a full or read-only staging disk: the instance is fetched again
        raise PullError(f"cannot stage instance {ref.sop} in {journal.instances}: {exc}") from None
    except Exception as exc:  # pydicom cannot write what it read: the instance is not usable
        reason = f"cannot be written as a DICOM file: {type(exc).__name__}: {exc}"[:300]
        return Entry(ref.sop, ref.series, Outcome.REJECTED, 0, reason)
    return Entry(ref.sop, ref.series, Outcome.STAGED, size)


def pull(
    url: str,
    store: str | os.PathLike[str],
    query: StudyQuery,
    *,
    project: str = "default",
    deidentify: bool | None = None,
    credentials: Credentials | None = None,
    workers: int = 4,
    staging: str | os.PathLike[str] | None = None,
    catalog_url: str | None = None,
    max_studies: int = 50,
    ingest_workers: int | None = None,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    audit_log: str | os.PathLike[str] | None = None,
) -> PullReport:
    """Pull the studies ``query`` selects on the DICOMweb server ``url`` into ``project``.

    Raises :class:`~voxelhub.dicomweb.errors.PullError` subclasses for a server that does not
    answer, refuses the credentials (401/403), is not there (404), or a query that matches
    nothing; :class:`PullIncomplete` when some instances could not be fetched (run the same
    pull again: it fetches only those).  Rejected instances are listed in the report.
    ``on_progress(done, total)`` follows the instances (a widget's progress bar).
    ``audit_log``: an audit trail (:mod:`voxelhub.audit`) to record the pull in, allowed or
    denied, as ``dicom.pull`` (where the puller may write one, e.g. a site's admin).

    When ``store`` is the data service's URL (on the hub), the service runs the pull
    (:mod:`voxelhub.dicomweb.service_pull`: curators, allowed servers, the site's credentials,
    audited there); ``staging``, ``catalog_url``, ``ingest_workers`` and ``audit_log`` are the
    service's business then.
    """
    service = _service_catalog(store)
    if service is not None:
        from voxelhub.dicomweb.service_pull import pull_through_service

        return pull_through_service(
            service, url, query, project=project, deidentify=deidentify,
            credentials=credentials, workers=workers, max_studies=max_studies,
            on_progress=on_progress, progress=progress,
        )  # fmt: skip
    if audit_log is None:
        return _pull(
            url, store, query, project, deidentify, credentials, workers, staging, catalog_url,
            max_studies, ingest_workers, progress, on_progress,
        )  # fmt: skip
    try:
        report = _pull(
            url, store, query, project, deidentify, credentials, workers, staging, catalog_url,
            max_studies, ingest_workers, progress, on_progress,
        )  # fmt: skip
    except PullError as exc:  # its kind only: the message may quote the query (a patient ID)
        _audit(audit_log, url, project, deidentify, decision="deny", reason=type(exc).__name__)
        raise
    _audit(audit_log, url, project, deidentify, report=report)
    return report


def _service_catalog(store: object) -> ServiceCatalog | None:
    """The data service's catalog when ``store`` is its URL (on the hub), else None."""
    from voxelhub.store.location import ServiceLocation, open_location

    if isinstance(store, str | os.PathLike):
        if os.fspath(store).split("://", 1)[0] not in ("http", "https"):
            return None
        store = open_location(store)
    if not isinstance(store, ServiceLocation):
        return None
    from voxelhub.service_catalog import ServiceCatalog

    return ServiceCatalog(store)


def _audit(
    path: str | os.PathLike[str],
    url: str,
    project: str,
    deidentify: bool | None,
    *,
    report: PullReport | None = None,
    decision: str = "",
    reason: str = "",
) -> None:
    """One ``dicom.pull`` record.  A de-identified project's record names no study and no
    query (a query may hold a patient ID)."""
    import getpass

    from voxelhub import audit
    from voxelhub.dicomweb.server import redact

    withheld = bool(deidentify) or bool(report and report.ingest and report.ingest.paths_withheld)
    detail: dict[str, object] = {"server": redact(url)}
    if report is not None:
        decision = "allow" if report.exit_code < 2 else "deny"
        reason = report.summary().splitlines()[0][:500]
        ingested = report.ingest
        detail.update(
            studies=report.studies,
            fetched=report.fetched,
            resumed=report.resumed,
            rejected=len(report.rejected),
            volumes=(ingested.written + ingested.unchanged) if ingested else [],
        )
        if not withheld:
            detail["query"] = report.query
    if withheld and report is not None:
        reason = reason.replace(report.query, "…")
    log_file = audit.AuditLog(path, fsync_every=1)
    try:
        log_file.record(
            user=getpass.getuser(),
            client="cli",
            action="dicom.pull",
            decision=decision,
            reason=reason,
            project=project,
            source=redact(url),
            nbytes=report.nbytes if report else 0,
            count=report.instances if report else 0,
            detail=detail,
        )
    finally:
        log_file.close()


def _pull(
    url: str,
    store: str | os.PathLike[str],
    query: StudyQuery,
    project: str,
    deidentify: bool | None,
    credentials: Credentials | None,
    workers: int,
    staging: str | os.PathLike[str] | None,
    catalog_url: str | None,
    max_studies: int,
    ingest_workers: int | None,
    progress: bool,
    on_progress: Callable[[int, int], None] | None,
) -> PullReport:
    if workers < 1:
        raise PullError(f"workers must be at least 1, not {workers}")
    server = Server(url, credentials)
    plan = plan_pull(server, query, max_studies=max_studies)
    root = Path(staging).expanduser() if staging is not None else default_staging()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = pull_folder(root, server, query, project)
    folder.mkdir(mode=0o700, exist_ok=True)
    journal = Journal(folder)
    report = PullReport(
        server.url,
        query.describe(),
        project,
        studies=len(plan.studies),
        instances=len(plan.instances),
        staging=str(folder),
    )
    todo = [ref for ref in plan.instances if not journal.done(ref.sop)]
    report.resumed = len(plan.instances) - len(todo)
    if report.resumed:
        log.info("resuming: %d of %d instances already staged", report.resumed, report.instances)
    try:  # the folder stays locked until its instances are in the store
        _fetch_all(server, journal, todo, report, workers, progress, on_progress)
        return _ingest_staged(
            journal, plan.instances, report, store, project, deidentify, catalog_url,
            ingest_workers, progress,
        )  # fmt: skip
    finally:
        journal.close()


def _fetch_all(
    server: Server,
    journal: Journal,
    todo: list[InstanceRef],
    report: PullReport,
    workers: int,
    progress: bool,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    """Fetch ``todo`` in ``workers`` streams; an interrupt cancels what has not started."""
    from tqdm.auto import tqdm

    started = time.monotonic()
    bar = tqdm(total=len(todo), desc="pulling", unit="instance", disable=not progress)
    handled = 0
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pull")
    try:
        futures = {pool.submit(_fetch, server, journal, ref): ref for ref in todo}
        for future in as_completed(futures):
            ref = futures[future]
            try:
                entry = future.result()
            except PullError as exc:
                report.failed.append({"sop": ref.sop, "reason": str(exc)})
            else:
                journal.record(entry)
                report.fetched += 1
                report.nbytes += entry.nbytes
            bar.update(1)
            bar.set_postfix_str(f"{report.nbytes / 1e6:.0f} MB", refresh=False)
            handled += 1
            if on_progress is not None:
                on_progress(report.resumed + handled, report.instances)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        report.seconds = time.monotonic() - started


def _ingest_staged(
    journal: Journal,
    instances: list[InstanceRef],
    report: PullReport,
    store: str | os.PathLike[str],
    project: str,
    deidentify: bool | None,
    catalog_url: str | None,
    ingest_workers: int | None,
    progress: bool,
) -> PullReport:
    """Every instance is staged or rejected: ingest the staged ones, then remove them."""
    if report.failed:
        raise PullIncomplete(
            f"{len(report.failed)} of {report.instances} instance(s) could not be fetched "
            f"(first: {report.failed[0]['reason']}); {report.fetched} fetched now are kept: "
            "run the same pull again to fetch the rest"
        )
    report.rejected = [
        {"sop": e.sop, "reason": e.reason}
        for ref in instances
        if (e := journal.entries[ref.sop]).outcome is Outcome.REJECTED
    ]
    staged = [r for r in instances if journal.entries[r.sop].outcome is Outcome.STAGED]
    if staged:
        from voxelhub.ingest import ingest

        report.ingest = ingest(
            journal.instances,
            store,
            project=project,
            deidentify=deidentify,
            catalog_url=catalog_url,
            workers=ingest_workers,
            progress=progress,
        )
        if report.ingest.exit_code < 2:
            # in the store now: the staged copies (identifiable) go
            shutil.rmtree(journal.folder, ignore_errors=True)
    log.info("%s", report.summary())
    return report
