"""The catalog as the data service serves it: the same queries as :class:`~voxelhub.catalog.Catalog`.

On the hub a kernel's ``voxelhub.open_catalog()`` returns this when ``$VOXELHUB_STORE`` is the
service's URL: every query is answered by the service, filtered to the projects the user is a
member of, with the user's hub token (``$JUPYTERHUB_API_TOKEN``).  Results are the same pandas
DataFrames (sent as Parquet, so types survive the trip) and volumes open lazily through a
:class:`~voxelhub.store.location.ServiceLocation`, so notebook code does not change.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from voxelhub.catalog import DeletedVolume, ProjectSettings
from voxelhub.errors import AccessDenied, CatalogError, NotFound, SettingLocked, StoreError
from voxelhub.store.location import ServiceLocation, service_message
from voxelhub.store.stored import StoredVolume

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

    from voxelhub.arrivals import Arrival
    from voxelhub.features.settings import Settings
    from voxelhub.uploads import UploadReport

log = logging.getLogger(__name__)

_PAGE = 1000
_SERIES_PER_REQUEST = 100


class ServiceCatalog:
    """The catalog through the data service: reads, and what a caller's role allows them to
    change (labels and feature tables for analysts; deletes and de-identification settings for
    curators).  Ingest runs at the server."""

    read_only = True

    def __init__(self, location: ServiceLocation) -> None:
        self.location = location
        self.url = location.url

    def __repr__(self) -> str:
        return f"ServiceCatalog({self.url!r})"

    def close(self) -> None:
        """Nothing to release: every request is its own connection."""

    # -- transport -------------------------------------------------------------------------------
    def _get(self, path: str, params: dict[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
        query = {k: str(v) for k, v in (params or {}).items() if v is not None and v != ""}
        status, body, headers = self.location.request(path, params=query)
        if status >= 400:
            raise _error(status, body, self.url)
        return body, headers

    def _json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        body, _ = self._get(path, params)
        return json.loads(body)

    def _frame(self, kind: str, params: dict[str, Any], limit: int | None) -> pd.DataFrame:
        """One page (``limit`` given) or every page, followed by the service's cursor."""
        import pandas as pd

        params = dict(params)
        if limit is not None:
            return self._page(kind, {**params, "limit": limit})
        pages = []
        while True:
            page = self._page(kind, {**params, "limit": _PAGE})
            pages.append(page)
            cursor = page.attrs.get("next_cursor")
            if not cursor or len(page) < _PAGE:
                break
            params = {**params, "after": cursor, "offset": None}
        frame = pd.concat(pages, ignore_index=True) if len(pages) > 1 else pages[0]
        frame.attrs.pop("next_cursor", None)
        return frame

    def _page(self, kind: str, params: dict[str, Any]) -> pd.DataFrame:
        import pandas as pd

        body, headers = self._get(kind, {**params, "format": "parquet"})
        frame = pd.read_parquet(io.BytesIO(body))
        cursor = headers.get("x-next-cursor")
        frame.attrs["next_cursor"] = cursor or None
        return frame

    # -- the Catalog API -----------------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        """Your hub name, admin flag and ``{project: role}``, as the service sees them."""
        return dict(self._json(""))

    def projects(self) -> pd.DataFrame:
        """The projects you are a member of."""
        import pandas as pd

        return pd.DataFrame(self._json("projects")["projects"])

    def studies(
        self,
        modality: str | None = None,
        *,
        project: str | None = None,
        patient: str | None = None,
        text: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        after: str | None = None,
    ) -> pd.DataFrame:
        """Studies of your projects (see :meth:`voxelhub.catalog.Catalog.studies`)."""
        params = {"modality": modality, "project": project, "patient": patient, "text": text}
        return self._frame("studies", {**params, "offset": offset or None, "after": after}, limit)

    def series(
        self,
        study_uid: str | None = None,
        *,
        modality: str | None = None,
        project: str | None = None,
        text: str | None = None,
        flag: str | None = None,
        uid: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        after: str | None = None,
    ) -> pd.DataFrame:
        """Volumes of your projects (see :meth:`voxelhub.catalog.Catalog.series`)."""
        params = {
            "study_uid": study_uid,
            "modality": modality,
            "project": project,
            "text": text,
            "flag": flag,
            "uid": uid,
        }
        return self._frame("series", {**params, "offset": offset or None, "after": after}, limit)

    def search(self, text: str, **filters: Any) -> pd.DataFrame:
        return self.series(text=text, **filters)

    def volume_row(self, uid: str) -> dict[str, Any]:
        match = self.series(uid=uid)
        if match.empty:
            raise NotFound(f"no volume or series {uid!r} in your projects at {self.url}")
        if len(match) > 1:
            splits = ", ".join(f"{r.volume_uid} ({r.split})" for r in match.itertuples())
            raise NotFound(f"series {uid!r} was split into {len(match)} volumes: {splits}")
        return {str(k): v for k, v in match.iloc[0].to_dict().items()}

    def stored_volume(self, uid_or_row: Any) -> StoredVolume:
        if isinstance(uid_or_row, StoredVolume):
            return uid_or_row
        uid = uid_or_row if isinstance(uid_or_row, str) else uid_or_row["volume_uid"]
        data = self._json("volumes/" + quote(str(uid), safe=""))
        return StoredVolume.from_json(data, self.location)

    def open_series(self, uid_or_row: Any, level: int = 0) -> xr.DataArray:
        return self.stored_volume(uid_or_row).open(level)

    def thumbnail(self, uid_or_row: Any, index: int | None = None, axis: str = "z") -> bytes:
        """A small grey PNG of slice ``index`` along ``axis``, made by the service in one request
        (see :mod:`voxelhub.store.thumbnail`)."""
        uid = uid_or_row if isinstance(uid_or_row, str) else uid_or_row["volume_uid"]
        params = {"axis": axis, **({"z": str(index)} if index is not None else {})}
        body, _ = self._get(f"volumes/{quote(str(uid), safe='')}/thumbnail", params)
        return body

    def reports(self) -> pd.DataFrame:
        raise AccessDenied("ingest reports are read at the server (`voxelhub list` as an admin)")

    def rejected(self, report_id: int | None = None) -> pd.DataFrame:
        raise AccessDenied("rejected files are read at the server (`voxelhub list` as an admin)")

    def put_labels(
        self,
        uid: str,
        name: str,
        array: Any,
        names: Mapping[int, str] | None,
        overwrite: bool,
        *,
        colors: Mapping[int, Any] | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Send a label image to the service (analysts and curators of the volume's project).

        :func:`voxelhub.roi.write_labels` with this catalog calls this after its own checks.
        Returns what the service stored: ``name``, ``rel_path``, ``names``, ``dtype``,
        ``checksum``.
        """
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.asarray(array), allow_pickle=False)
        params = {"names": json.dumps({str(k): v for k, v in (names or {}).items()})}
        if colors:
            params["colors"] = json.dumps({str(k): [int(c) for c in v] for k, v in colors.items()})
        if source:
            params["source"] = json.dumps(dict(source), default=str)
        if overwrite:
            params["overwrite"] = "true"
        path = f"volumes/{quote(uid, safe='')}/labels/{quote(name, safe='')}"
        status, body, _ = self.location.request(
            path, params=params, method="PUT", data=buf.getvalue(), timeout=600
        )
        if status == 409:
            raise StoreError(service_message(body, status))
        if status >= 400:
            raise _error(status, body, self.url)
        return dict(json.loads(body))

    # -- curators' changes ---------------------------------------------------------------------
    def _send(self, path: str, method: str, data: bytes | None = None) -> Any:
        status, body, _ = self.location.request(path, method=method, data=data, timeout=600)
        if status == 409:
            raise SettingLocked(service_message(body, status))
        if status >= 400:
            raise _error(status, body, self.url)
        return json.loads(body)

    def arrivals(self, project: str, *, limit: int = 200) -> list[Arrival]:
        """What the DICOM edge received for ``project``, newest first (its curators; audited)."""
        from voxelhub.arrivals import Arrival

        rows = self._json("arrivals", {"project": project, "limit": limit})["arrivals"]
        return [Arrival.from_json(row) for row in rows]

    def delete_volume(self, uid: str) -> DeletedVolume:
        """Remove a volume with its labels and feature rows (curators of its project; see
        :meth:`voxelhub.catalog.Catalog.delete_volume`).  The service audits it."""
        return DeletedVolume(**self._send("volumes/" + quote(uid, safe=""), "DELETE"))

    def project_settings(self, name: str) -> ProjectSettings:
        """A project's de-identification settings (members of the project)."""
        data = self._send(f"projects/{quote(name, safe='')}/settings", "GET")
        data.pop("locked", None)
        return ProjectSettings(**data)

    def set_project_settings(self, name: str, *, deidentify: bool) -> ProjectSettings:
        """Set whether ingest de-identifies ``name`` (curators; refused with
        :class:`~voxelhub.errors.SettingLocked` while the project holds volumes)."""
        body = json.dumps({"deidentify": deidentify}).encode()
        data = self._send(f"projects/{quote(name, safe='')}/settings", "PUT", body)
        data.pop("locked", None)
        return ProjectSettings(**data)

    # -- uploads (curators) -----------------------------------------------------------------------
    def upload(
        self,
        path: str | os.PathLike[str] | bytes,
        *,
        project: str,
        wait: bool = True,
        on_progress: Callable[[UploadReport], None] | None = None,
    ) -> UploadReport:
        """Send a zip (or a folder, zipped on the fly, or the zip's bytes) to be checked and
        ingested into ``project`` (curators); with ``wait``, poll until it ends and return the
        report, calling ``on_progress`` with each state seen."""
        from voxelhub.uploads import UploadReport, zip_bytes

        body = path if isinstance(path, bytes) else zip_bytes(path)
        report = UploadReport.from_json(
            self._send(f"projects/{quote(project, safe='')}/uploads", "POST", body)
        )
        while wait and not report.state.finished:
            if on_progress is not None:
                on_progress(report)
            time.sleep(0.5)
            report = self.upload_status(report.id)
        if on_progress is not None:
            on_progress(report)
        return report

    def upload_status(self, upload_id: str) -> UploadReport:
        """An upload's state, progress and report (its uploader, curators of its project)."""
        from voxelhub.uploads import UploadReport

        return UploadReport.from_json(self._send("uploads/" + quote(upload_id, safe=""), "GET"))

    # -- feature tables ------------------------------------------------------------------------
    def put_features(self, table: pd.DataFrame, settings: Settings) -> dict[str, Any]:
        """Store cohort result rows (``extract_many``'s columns) for ``settings`` at the hub.

        Every row's ``series`` must be a volume of the catalog, and you an analyst or curator
        of each volume's project; rows replace earlier ones of the same (series, ROI,
        settings).  Sent as Parquet with the settings in its metadata.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        from voxelhub.features.results import COLUMNS, SETTINGS_METADATA

        frame = table.reindex(columns=COLUMNS)
        arrow = pa.Table.from_pandas(frame, preserve_index=False)
        metadata = {**(arrow.schema.metadata or {}), SETTINGS_METADATA: settings.to_json()}
        buf = io.BytesIO()
        pq.write_table(arrow.replace_schema_metadata(metadata), buf)
        status, body, _ = self.location.request(
            "features", method="PUT", data=buf.getvalue(), timeout=600
        )
        if status >= 400:
            raise _error(status, body, self.url)
        return dict(json.loads(body))

    def features(
        self, settings: Settings | None = None, series: list[str] | None = None
    ) -> pd.DataFrame:
        """Stored result rows of your projects' volumes, for one setting and/or some series."""
        import pandas as pd

        from voxelhub.features.results import COLUMNS

        base = {"settings_hash": settings.hash if settings is not None else None}
        batches = (
            [None]
            if series is None
            else [
                series[i : i + _SERIES_PER_REQUEST]
                for i in range(0, len(series), _SERIES_PER_REQUEST)
            ]
        )
        frames = []
        for batch in batches:
            params: dict[str, Any] = {**base, "format": "parquet"}
            query = {k: str(v) for k, v in params.items() if v is not None}
            status, body, _ = self.location.request(
                "features", params={**query, **({"series": batch} if batch else {})}
            )
            if status >= 400:
                raise _error(status, body, self.url)
            frames.append(pd.read_parquet(io.BytesIO(body)))
        if not frames:
            return pd.DataFrame(columns=COLUMNS)
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        frame["value"] = frame["value"].astype(float)
        return frame

    def feature_settings(self, settings_hash: str) -> Settings:
        """The settings a stored hash stands for."""
        from voxelhub.features.settings import Settings

        data = self._json("features/settings/" + quote(settings_hash, safe=""))
        return Settings.from_json(str(data["settings"]))

    def results(self) -> ServiceResults:
        """Cohort results stored through the service (what ``extract_many(save_to=…)`` uses)."""
        return ServiceResults(self)

    # -- DICOMweb pulls (curators) ------------------------------------------------------------
    def start_pull(self, project: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """Ask the service to pull from an allowed DICOMweb server into ``project`` (curators;
        see :mod:`voxelhub.dicomweb.service_pull`); the pull's state, with its ``id``."""
        body = json.dumps(dict(request)).encode()
        return dict(self._send(f"projects/{quote(project, safe='')}/pulls", "POST", body))

    def pull_query(self, project: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """The studies (and instance count) a pull's query selects, asked by the service of
        an allowed server (curators); a failure is raised as its ``voxelhub.dicomweb`` error."""
        path = f"projects/{quote(project, safe='')}/pull-queries"
        body = json.dumps(dict(request)).encode()
        status, data, _ = self.location.request(path, method="POST", data=body, timeout=600)
        if status == 400:
            from voxelhub.dicomweb import errors

            kind = getattr(errors, str(_json_field(data, "kind")), None)
            if isinstance(kind, type) and issubclass(kind, errors.PullError):
                raise kind(service_message(data, status))
        if status >= 400:
            raise _error(status, data, self.url)
        return dict(json.loads(data))

    def pull_status(self, pull_id: str) -> dict[str, Any]:
        """A pull's state, progress and report (its requester, curators of its project)."""
        return dict(self._send("pulls/" + quote(pull_id, safe=""), "GET"))

    # -- cohort packages (curators) -----------------------------------------------------------
    def import_cohort(self, project: str, package_tar: bytes) -> dict[str, Any]:
        """Send a cohort package (a tar of its folder) for the service to verify and import
        into ``project`` (curators); what was imported.  A refusal is raised as the
        :mod:`voxelhub.cohort.errors` class the service names."""
        path = f"projects/{quote(project, safe='')}/cohorts"
        status, body, _ = self.location.request(path, method="POST", data=package_tar,
                                                timeout=3600)  # fmt: skip
        if status in (400, 409):
            from voxelhub.cohort import errors

            kind = getattr(errors, str(_json_field(body, "kind")), None)
            message = service_message(body, status)
            if kind is errors.TamperedPackage:
                raise errors.TamperedPackage(message, obj=str(_json_field(body, "object")))
            if isinstance(kind, type) and issubclass(kind, errors.CohortError):
                raise kind(message)
            raise errors.CohortError(message)
        if status >= 400:
            raise _error(status, body, self.url)
        return dict(json.loads(body))

    def export_cohort(self, project: str, selection: Mapping[str, Any]) -> tuple[bytes, str]:
        """The service's cohort package of ``selection`` in ``project`` as a tar, and its
        manifest's SHA-256 (curators).  A refusal is raised as its cohort error class."""
        path = f"projects/{quote(project, safe='')}/cohort-exports"
        body = json.dumps(dict(selection)).encode()
        status, data, headers = self.location.request(path, method="POST", data=body,
                                                      timeout=3600)  # fmt: skip
        if status == 400:
            from voxelhub.cohort import errors

            kind = getattr(errors, str(_json_field(data, "kind")), None)
            message = service_message(data, status)
            if isinstance(kind, type) and issubclass(kind, errors.CohortError):
                raise kind(message)
            raise errors.CohortError(message)
        if status >= 400:
            raise _error(status, data, self.url)
        return data, headers.get("x-voxelhub-manifest-sha256", "")


class ServiceResults:
    """:class:`voxelhub.features.results.ResultStore`'s interface over the data service.

    ``extract_many(..., catalog=cat, save_to=cat)`` with the hub's catalog stores each finished
    case through the service and resumes from what it stored.
    """

    def __init__(self, catalog: ServiceCatalog) -> None:
        self.catalog = catalog

    def done(self, settings: Settings) -> set[tuple[str, str]]:
        """(series, roi) pairs of your projects already computed without error."""
        frame = self.catalog.features(settings)
        ok = frame[frame["error"].isna()]
        return {(str(s), str(r)) for s, r in zip(ok["series"], ok["roi"], strict=True)}

    def save(self, table: pd.DataFrame, settings: Settings) -> None:
        if table.empty:
            return
        try:
            self.catalog.put_features(table, settings)
        except NotFound:
            if not table["error"].notna().all():
                raise
            # a failed case of a volume the service does not show you (an unknown UID): there
            # is nothing to resume from it, and nowhere it may be stored
            log.warning(
                "not stored: failed case(s) of %s (no such volume in your projects)",
                ", ".join(sorted(map(str, set(table["series"])))),
            )

    def load(
        self, settings: Settings | None = None, series: list[str] | None = None
    ) -> pd.DataFrame:
        return self.catalog.features(settings, series)

    def settings(self, settings_hash: str) -> Settings:
        return self.catalog.feature_settings(settings_hash)


def _error(status: int, body: bytes, url: str) -> Exception:
    """The service's JSON message as the matching VoxelHub error."""
    message = service_message(body, status)
    if status in (401, 403):
        return AccessDenied(f"the data service refused: {message}")
    if status == 404:
        return NotFound(message)
    return CatalogError(f"the data service at {url} answered {status}: {message}")


def _json_field(body: bytes, name: str) -> Any:
    try:
        return json.loads(body).get(name)
    except (ValueError, AttributeError):
        return None
