"""The service's view of the catalog: queries with checked parameters, and volume lookups.

Thin over :class:`voxelhub.catalog.Catalog`: it checks and converts query parameters (a bad
``limit`` is a 400, never a 500), restricts every query to the caller's projects, and finds the
volume a store key belongs to (cached briefly: a chunk read must not cost a catalog query).
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from voxelhub.catalog import (
    Catalog,
    DeletedVolume,
    Patient,
    Project,
    ProjectSettings,
    Study,
    Volume,
)
from voxelhub.catalog_sealing import CorruptValue
from voxelhub.errors import CatalogError, NotFound, SettingLocked, VoxelHubError
from voxelhub.features.results import COLUMNS, SETTINGS_METADATA, ResultStore
from voxelhub.features.settings import Settings
from voxelhub.store.keys import MissingKey
from voxelhub.store.location import open_location

if TYPE_CHECKING:
    import pandas as pd

    from voxelhub.roi.labels import LabelImage
    from voxelhub.store.stored import StoredVolume

_CACHE_SECONDS = 10.0
_MAX_TEXT = 200
_MAX_FEATURE_ROWS = 1_000_000


class QueryError(ValueError):
    """A query parameter the catalog cannot take (answered 400)."""


class Conflict(QueryError):
    """The request would replace something that exists, and did not ask to (HTTP 409)."""


@dataclass(frozen=True)
class Found:
    """What an access decision needs to know about a volume."""

    volume_uid: str
    store_path: str
    project: str
    patient: str
    """The patient ID, or in a sealed project its blind index (``vhb1.…``): what audits name."""
    study_uid: str


class CatalogView:
    def __init__(
        self,
        store: str,
        catalog_url: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.location = open_location(store, storage_options)
        self.catalog = Catalog(self.location, catalog_url)
        self._paths: dict[str, tuple[float, Found | None]] = {}
        self._lock = threading.Lock()
        self._result_store: ResultStore | None = None

    # -- queries -----------------------------------------------------------------------------------
    def projects(self, allowed: list[str] | None) -> pd.DataFrame:
        frame = self.catalog.projects()
        if allowed is not None:
            frame = frame[frame["name"].isin(allowed)].reset_index(drop=True)
        return frame

    def query(
        self, kind: str, args: dict[str, str], allowed: list[str] | None, max_page: int
    ) -> pd.DataFrame:
        """``series`` or ``studies`` with the request's parameters, within ``allowed`` projects."""
        kwargs: dict[str, Any] = {}
        for name, value in args.items():
            if len(value) > _MAX_TEXT:
                raise QueryError(f"{name} is longer than {_MAX_TEXT} characters")
            if name in ("limit", "offset"):
                try:
                    number = int(value)
                except ValueError:
                    raise QueryError(f"{name} must be an integer, not {value[:20]!r}") from None
                if number < 0 or (name == "limit" and not 1 <= number <= max_page):
                    raise QueryError(
                        f"{name} must be between {int(name == 'limit')} and {max_page}"
                    )
                kwargs[name] = number
            else:
                kwargs[name] = value
        kwargs.setdefault("limit", max_page)
        if allowed is not None:  # always, whatever else the request filters on
            kwargs["projects"] = allowed
        method = self.catalog.series if kind == "series" else self.catalog.studies
        try:
            return method(**kwargs)
        except CorruptValue:  # the database was changed, not the request: not the caller's fault
            raise
        except CatalogError as exc:  # e.g. a tampered paging cursor
            raise QueryError(str(exc)) from exc

    def audit_args(self, args: dict[str, str]) -> dict[str, str]:
        """A query as the audit trail records it: where the catalog has sealed projects, a
        patient ID becomes its blind indexes, so the trail on disk never names it."""
        if "patient" not in args or not self.catalog.sealed_projects():
            return args
        try:
            names = self.catalog.audit_names(args["patient"])[1:]
        except MissingKey:
            names = ["(withheld: no key)"]
        return {**args, "patient": ",".join(names)}

    # -- volumes -----------------------------------------------------------------------------------
    def _found(self, where: Any) -> Found | None:
        stmt = (
            select(
                Volume.volume_uid,
                Volume.store_path,
                Project.name,
                Patient.patient_key,
                Patient.patient_key_index,
                Study.study_uid,
            )
            .join(Study, Volume.study_id == Study.id)
            .join(Patient, Study.patient_id == Patient.id)
            .join(Project, Patient.project_id == Project.id)
            .where(where)
        )
        with self.catalog.engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        uid, path, project, patient, index, study = row
        # an encrypted identifiable project's patient ID is sealed, and the audit trail is a
        # file on disk too: it names that patient by the blind index, never by the opened ID
        # (Catalog.audit_names turns an ID into what to search the trail for)
        return Found(str(uid), str(path), str(project), str(index or patient), str(study))

    def volume(self, uid: str) -> Found | None:
        """A volume by volume UID (or its unsplit SeriesInstanceUID)."""
        if len(uid) > 128:
            return None
        return self._found(Volume.volume_uid == uid) or self._found(Volume.series_uid == uid)

    def by_path(self, store_path: str) -> Found | None:
        """The volume stored at ``store_path`` (cached for a few seconds)."""
        now = time.monotonic()
        with self._lock:
            hit = self._paths.get(store_path)
        if hit and now - hit[0] < _CACHE_SECONDS:
            return hit[1]
        found = self._found(Volume.store_path == store_path)
        with self._lock:
            if len(self._paths) > 10_000:
                self._paths.clear()
            self._paths[store_path] = (now, found)
        return found

    def stored(self, store_path: str) -> StoredVolume:
        found = self.by_path(store_path)
        if found is None:
            raise QueryError(f"no volume at {store_path}")
        return self.catalog.stored_volume(self.catalog.volume_row(found.volume_uid))

    def thumbnail(self, store_path: str, index: int | None, axis: str) -> bytes:
        from voxelhub.store.thumbnail import thumbnail_png

        try:
            return thumbnail_png(self.stored(store_path), index, axis)
        except VoxelHubError as exc:
            raise QueryError(str(exc)) from None

    def write_labels(
        self,
        uid: str,
        body: bytes,
        name: str,
        names: dict[int, str],
        overwrite: bool,
        colors: dict[int, list[int]] | None = None,
        source: dict[str, Any] | None = None,
    ) -> LabelImage:
        """Store a label image sent as ``.npy`` bytes (no pickles: arrays only)."""
        import numpy as np

        from voxelhub.roi.labels import write_labels

        try:
            array = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise QueryError(f"the body is not a .npy array: {exc}") from None
        try:
            stored = self.catalog.stored_volume(uid)
            if name in stored.labels and not overwrite:
                raise Conflict(
                    f"label image {name!r} already exists for {uid}; "
                    "pass overwrite=True to replace it"
                )
            return write_labels(
                self.catalog,
                stored,
                name,
                array,
                names=names or None,
                colors=colors or None,
                source=source or None,
                overwrite=overwrite,
            )
        except VoxelHubError as exc:
            raise QueryError(str(exc)) from None

    # -- curators' changes -------------------------------------------------------------------------
    def delete_volume(self, uid: str) -> DeletedVolume:
        """Remove a volume from the catalog and the store (see :meth:`Catalog.delete_volume`);
        its store path stops resolving here at once, not after the cache's few seconds."""
        try:
            deleted = self.catalog.delete_volume(uid)
        except NotFound as exc:  # deleted by someone else a moment ago
            raise NotInCatalog(str(exc)) from None
        with self._lock:
            self._paths.pop(deleted.store_path, None)
        return deleted

    def project_settings(self, name: str) -> ProjectSettings:
        try:
            return self.catalog.project_settings(name)
        except NotFound:
            raise NotInCatalog(f"no project {name!r} in the catalog") from None

    def set_project_settings(self, name: str, deidentify: bool) -> ProjectSettings:
        try:
            return self.catalog.set_project_settings(name, deidentify=deidentify)
        except SettingLocked as exc:
            raise Conflict(str(exc)) from None

    # -- feature tables ----------------------------------------------------------------------------
    def _results(self) -> ResultStore:
        with self._lock:
            if self._result_store is None:
                self._result_store = ResultStore(self.catalog)
            return self._result_store

    def read_feature_table(self, body: bytes) -> FeatureTable:
        """A result table sent as Parquet: checked, its settings, and the volume of each series.

        Nothing is stored here: the handler decides first whether the caller may write to
        every project the table touches.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            arrow = pq.read_table(pa.BufferReader(body))
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise QueryError(f"the body is not a Parquet table: {str(exc)[:200]}") from None
        text = (arrow.schema.metadata or {}).get(SETTINGS_METADATA)
        if text is None:
            raise QueryError("the table carries no settings (voxelhub.settings metadata)")
        try:
            settings = Settings.from_json(text.decode())
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise QueryError(f"the table's settings cannot be read: {str(exc)[:200]}") from None
        missing = [c for c in COLUMNS if c not in arrow.column_names]
        if missing:
            raise QueryError(f"the table lacks column(s) {missing}")
        if arrow.num_rows == 0:
            raise QueryError("the table has no rows")
        if arrow.num_rows > _MAX_FEATURE_ROWS:
            raise QueryError(f"more than {_MAX_FEATURE_ROWS} rows in one write")
        frame = arrow.select(COLUMNS).to_pandas()
        hashes = set(frame["settings_hash"])
        if hashes != {settings.hash}:
            raise QueryError(
                f"rows carry settings_hash {sorted(map(str, hashes))[:3]}, the table's settings "
                f"hash to {settings.hash}"
            )
        for column in ("series", "roi"):
            values = frame[column]
            if values.isna().any() or not all(isinstance(v, str) and v for v in values):
                raise QueryError(f"every row needs a {column} name")
            if values.str.len().max() > 128:
                raise QueryError(f"a {column} name is longer than 128 characters")
        try:
            frame["value"] = frame["value"].astype(float)
        except (ValueError, TypeError) as exc:
            raise QueryError(f"values must be numbers: {str(exc)[:200]}") from None
        volumes: dict[str, Found] = {}
        for series in sorted(set(frame["series"])):
            found = self.volume(series)
            if found is None:
                raise NotInCatalog(f"no volume {series[:80]!r} in your projects")
            volumes[series] = found
        return FeatureTable(frame, settings, volumes)

    def save_features(self, table: FeatureTable) -> None:
        self._results().save(table.frame, table.settings)

    def features(
        self, settings_hash: str | None, series: list[str], allowed: list[str] | None
    ) -> tuple[pd.DataFrame, dict[str, Found]]:
        """Stored result rows of volumes in the ``allowed`` projects (all for None), and the
        volume of each series given."""
        frame = self._results().load(settings_hash or None, series or None)
        found = {s: self.volume(s) for s in sorted(set(frame["series"]))}
        visible = {
            s: f
            for s, f in found.items()
            if f is not None and (allowed is None or f.project in allowed)
        }
        frame = frame[frame["series"].isin(visible)].reset_index(drop=True)
        return frame, visible

    def feature_settings(self, settings_hash: str) -> str | None:
        try:
            return self._results().settings(settings_hash).to_json()
        except KeyError:
            return None


class NotInCatalog(QueryError):
    """A feature row names a volume the catalog does not have (answered 404)."""


@dataclass(frozen=True)
class FeatureTable:
    """A checked result table, its settings and the volume each of its series is."""

    frame: pd.DataFrame
    settings: Settings
    volumes: dict[str, Found]
