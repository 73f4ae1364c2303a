"""``voxelhub pull`` on the hub: the data service pulls, the kernel asks and follows.

On the hub the store belongs to the data service's account, so a pull into it is run by the
service (``POST api/projects/<name>/pulls``, curators only, from the DICOMweb servers the site
allows, with the site's credentials for them).  :func:`voxelhub.dicomweb.pull` comes here when
its store is the service's URL: it sends the query with the user's hub token, polls the pull's
progress, and returns the same :class:`~voxelhub.dicomweb.PullReport` (or raises the same
:mod:`voxelhub.dicomweb.errors` class) a local pull would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from voxelhub.dicomweb import errors
from voxelhub.dicomweb.errors import PullError
from voxelhub.dicomweb.pull import PullReport
from voxelhub.dicomweb.query import StudyQuery, StudySummary
from voxelhub.dicomweb.server import Credentials, redact

if TYPE_CHECKING:
    from voxelhub.service_catalog import ServiceCatalog

POLL_SECONDS = 0.5
FINISHED = ("done", "failed")


def request_body(
    url: str, query: StudyQuery, workers: int, max_studies: int, deidentify: bool | None
) -> dict[str, Any]:
    """The JSON the service takes: the URL without a user part, the criteria, the knobs."""
    query.filters()  # a malformed query is told here, as a local pull tells it
    criteria: dict[str, Any] = {
        "patient_id": query.patient_id,
        "study_date": query.study_date,
        "modality": query.modality,
        "accession": query.accession,
        "study_uid": query.study_uid,
        "extra": dict(query.extra),
    }
    body: dict[str, Any] = {
        "url": redact(url),
        "query": {k: v for k, v in criteria.items() if v not in (None, "", {})},
        "workers": workers,
        "max_studies": max_studies,
    }
    if deidentify:
        body["deidentify"] = True
    return body


def report_from_json(data: dict[str, Any]) -> PullReport:
    """The service's report as the :class:`PullReport` a local pull returns."""
    from voxelhub.ingest import IngestReport

    fields = dict(data)
    ingest = fields.pop("ingest", None)
    report = PullReport(**fields)
    report.ingest = IngestReport(**ingest) if ingest else None
    return report


def _raise(state: dict[str, Any]) -> None:
    """A failed pull as the error class the service named (PullError if it is not one)."""
    kind = getattr(errors, str(state.get("error", "")), None)
    cls = kind if isinstance(kind, type) and issubclass(kind, PullError) else PullError
    raise cls(f"the data service's pull {state['id']}: {state.get('message', '')}")


def _refuse_credentials(credentials: Credentials | None) -> None:
    """A caller's credentials never travel to the service (it uses the site's)."""
    if credentials is not None and (credentials.user or credentials.password or credentials.token):
        raise PullError(
            "on the hub the data service pulls with the credentials the site configured for "
            "each allowed server: give none (unset $VOXELHUB_DICOMWEB_USER/_PASSWORD/_TOKEN)"
        )


def pull_through_service(
    catalog: ServiceCatalog,
    url: str,
    query: StudyQuery,
    *,
    project: str,
    deidentify: bool | None,
    credentials: Credentials | None,
    workers: int,
    max_studies: int,
    on_progress: Callable[[int, int], None] | None,
    progress: bool,
) -> PullReport:
    """Ask the service to pull, follow it to the end; its report, or its error raised here."""
    _refuse_credentials(credentials)
    from tqdm.auto import tqdm

    body = request_body(url, query, workers, max_studies, deidentify)
    state = catalog.start_pull(project, body)
    bar = tqdm(total=0, desc="pulling (data service)", unit="instance", disable=not progress)
    try:
        while True:
            if state["total"]:
                bar.total = state["total"]
                bar.n = state["done"]
                bar.refresh()
                if on_progress is not None:
                    on_progress(int(state["done"]), int(state["total"]))
            if state["state"] in FINISHED:
                break
            time.sleep(POLL_SECONDS)
            state = catalog.pull_status(state["id"])
    finally:
        bar.close()
    if state.get("report") is None:
        _raise(state)
    return report_from_json(state["report"])


def find(
    url: str,
    store: object,
    query: StudyQuery,
    *,
    project: str,
    credentials: Credentials | None = None,
    max_studies: int = 50,
    count_instances: bool = False,
) -> tuple[list[StudySummary], int | None]:
    """The studies ``query`` selects and, with ``count_instances``, how many instances a pull
    would bring: asked of the server here, or by the data service when ``store`` is its URL
    (on the hub the kernel may not reach the archive; curators only)."""
    from voxelhub.dicomweb.pull import _service_catalog
    from voxelhub.dicomweb.query import find_studies, plan_pull
    from voxelhub.dicomweb.server import Server

    service = _service_catalog(store)
    if service is None:
        server = Server(url, credentials)
        studies = find_studies(server, query)
        if not count_instances:
            return studies, None
        return studies, len(plan_pull(server, query, max_studies=max_studies).instances)
    _refuse_credentials(credentials)
    found = service.pull_query(project, request_body(url, query, 1, max_studies, None))
    studies = [
        StudySummary(**{**s, "modalities": tuple(s["modalities"])}) for s in found["studies"]
    ]
    return studies, int(found["instances"])
