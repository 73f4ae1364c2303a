"""The catalog: projects, patients, studies, volumes, ingest reports and rejected files.

SQLAlchemy 2 over SQLite (WAL, inside the store) by default, PostgreSQL by URL.  Queries return
pandas DataFrames for notebooks.  A volume row is committed only after its OME-Zarr is complete
and verified, in one transaction with its study and patient, so the catalog never lists a volume
the store does not hold.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import logging
import operator
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    cast,
    create_engine,
    event,
    exists,
    false,
    func,
    literal_column,
    or_,
    select,
    tuple_,
    union,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.pool import NullPool

from voxelhub.errors import CatalogError, NotFound, SettingLocked
from voxelhub.store.location import Location

if TYPE_CHECKING:
    import pandas as pd

    from voxelhub.catalog_sealing import ColumnSealer
    from voxelhub.store.stored import StoredVolume

CATALOG_FILE = "catalog.sqlite"

log = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class EncryptionSettingError(CatalogError):
    """A project's encryption cannot change: it is encrypted, or already holds clear volumes."""


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    deidentify: Mapped[bool] = mapped_column(Boolean, default=False)
    # chunks and private attributes sealed with the project's data key (voxelhub.store.sidecar)
    encrypted: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false(), nullable=False
    )
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    patients: Mapped[list[Patient]] = relationship(back_populates="project")


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (
        UniqueConstraint("project_id", "patient_key"),
        Index("ix_patients_patient_key", "patient_key"),
        Index("ux_patients_key_index", "project_id", "patient_key_index", unique=True),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    # Text: an encrypted identifiable project keeps these sealed (voxelhub.catalog_sealing)
    patient_key: Mapped[str] = mapped_column(Text)
    patient_name: Mapped[str] = mapped_column(Text, default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    birth_date: Mapped[str] = mapped_column(Text, default="")
    # blind index of a sealed patient_key (HMAC), for finding the patient again; else NULL
    patient_key_index: Mapped[str | None] = mapped_column(String(96), nullable=True)
    project: Mapped[Project] = relationship(back_populates="patients")
    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (
        UniqueConstraint("patient_id", "study_uid"),
        # the orders of series() and studies(), with the patient for the project filter: keyset
        # pages are range scans of these indexes, and a deep OFFSET walks them alone, without a
        # table row per study (2.5x faster at offset 50,000: benchmarks/README.md)
        Index("ix_studies_uid_id_patient", "study_uid", "id", "patient_id"),
        Index("ix_studies_date_uid_id_patient", "study_date", "study_uid", "id", "patient_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_date: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    accession_number: Mapped[str] = mapped_column(Text, default="")
    patient: Mapped[Patient] = relationship(back_populates="studies")
    volumes: Mapped[list[Volume]] = relationship(back_populates="study")


class Volume(Base):
    """One volume: a series, or one part of a series split by echo, type, orientation …"""

    __tablename__ = "volumes"
    id: Mapped[int] = mapped_column(primary_key=True)
    volume_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    split: Mapped[str] = mapped_column(String(256), default="")
    modality: Mapped[str] = mapped_column(String(16), index=True)
    body_part: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    manufacturer: Mapped[str] = mapped_column(String(128), default="")
    slices: Mapped[int] = mapped_column(Integer)
    rows: Mapped[int] = mapped_column(Integer)
    columns: Mapped[int] = mapped_column(Integer)
    spacing_z: Mapped[float] = mapped_column(Float)
    spacing_y: Mapped[float] = mapped_column(Float)
    spacing_x: Mapped[float] = mapped_column(Float)
    dtype: Mapped[str] = mapped_column(String(16))
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    reasons: Mapped[str] = mapped_column(Text, default="")
    store_path: Mapped[str] = mapped_column(String(512))
    checksum: Mapped[str] = mapped_column(String(80))
    content_key: Mapped[str] = mapped_column(String(80))
    n_instances: Mapped[int] = mapped_column(Integer)
    timepoints: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    channels: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # 3: RGB
    ingested_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    study: Mapped[Study] = relationship(back_populates="volumes")


NO_SERIES_NUMBER = -1
"""Where volumes without a SeriesNumber sort among their study's volumes (first)."""

_series_number_key = func.coalesce(Volume.series_number, literal_column(str(NO_SERIES_NUMBER)))
"""The series number as ordered by ``series()``: never NULL, so keyset comparisons hold."""

# series() walks studies by (study_uid, id), then each study's volumes by this index, in order
Index("ix_volumes_study_order", Volume.study_id, _series_number_key, Volume.split, Volume.id)
# studies(modality=…): does the study have a volume of that modality (an index-only lookup)
Index("ix_volumes_study_modality", Volume.study_id, Volume.modality)


class IngestReport(Base):
    __tablename__ = "ingest_reports"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    paths: Mapped[list[str]] = mapped_column(JSON, default=list)
    files_seen: Mapped[int] = mapped_column(Integer, default=0)
    frames: Mapped[int] = mapped_column(Integer, default=0)
    volumes_written: Mapped[int] = mapped_column(Integer, default=0)
    volumes_unchanged: Mapped[int] = mapped_column(Integer, default=0)
    volumes_failed: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    non_dicom: Mapped[list[str]] = mapped_column(JSON, default=list)
    # a de-identified project's report: paths, non_dicom and rejected sources are labels
    paths_withheld: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false(), nullable=False
    )
    rejected: Mapped[list[RejectedFile]] = relationship(back_populates="report")


class RejectedFile(Base):
    __tablename__ = "rejected_files"
    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("ingest_reports.id"), index=True)
    source: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    tag: Mapped[str] = mapped_column(String(16), default="")
    series_uid: Mapped[str] = mapped_column(String(64), default="")
    report: Mapped[IngestReport] = relationship(back_populates="rejected")


@dataclass(frozen=True)
class DeletedVolume:
    """What :meth:`Catalog.delete_volume` removed (the same over the data service)."""

    volume_uid: str
    store_path: str
    project: str
    patient: str
    study_uid: str
    feature_rows: int
    """stored cohort feature rows of the volume, removed with it"""


@dataclass(frozen=True)
class ProjectSettings:
    """A project's de-identification settings, as curators read and change them."""

    name: str
    deidentify: bool
    """ingest applies :data:`voxelhub.dicom.deid.PROFILE_NAME` with the project's own secret
    (dates shifted per patient, private tags removed); fixed while the project holds volumes"""
    volumes: int
    profile: str
    """the de-identification profile ingest applies ("" for an identifiable project)"""

    @property
    def locked(self) -> bool:
        """``deidentify`` cannot change: the project holds volumes ingested under it."""
        return self.volumes > 0


_FEATURES_TABLE = "radiomics_features"
"""Where :mod:`voxelhub.features.results` keeps cohort feature rows (keyed by volume UID)."""


def default_catalog_url(location: Location) -> str:
    """SQLite inside a local store; remote stores need an explicit catalog URL."""
    env = os.environ.get("VOXELHUB_CATALOG_URL")
    if env:
        return env
    path = location.catalog_file()
    if path is None:
        raise CatalogError(
            f"store {location.url} is remote: give catalog_url= (e.g. postgresql+psycopg://…) "
            "or set VOXELHUB_CATALOG_URL"
        )
    if os.path.exists(path) and not (
        os.access(path, os.W_OK) and os.access(os.path.dirname(path), os.W_OK)
    ):
        return readonly_sqlite_url(path)
    return f"sqlite:///{path}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_reader_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA query_only=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout."""
    if "mode=ro" in url and url.startswith("sqlite"):
        # a fresh connection per query, so a long-lived reader still sees new ingests
        engine = create_engine(url, future=True, poolclass=NullPool)
        event.listen(engine, "connect", _sqlite_reader_pragmas)
        return engine
    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def readonly_sqlite_url(path: str) -> str:
    """URL that opens a catalog the caller may not write (another user's store on the hub).

    SQLite in WAL mode needs write access to the folder even to read; ``immutable=1`` reads
    without it.  Readers then get no locking, so prefer PostgreSQL (or the data service) where
    several users read while ingests run.
    """
    return f"sqlite:///file:{path}?mode=ro&immutable=1&uri=true"


_ADDED_COLUMNS = {
    "volumes": {
        "timepoints": "INTEGER NOT NULL DEFAULT 1",
        "channels": "INTEGER NOT NULL DEFAULT 1",
    },
    "ingest_reports": {"paths_withheld": "BOOLEAN NOT NULL DEFAULT FALSE"},
    "projects": {"encrypted": "BOOLEAN NOT NULL DEFAULT FALSE"},
    "patients": {"patient_key_index": "VARCHAR(96)"},
}
"""Columns added after a catalog may have been created: (table → column → SQL type)."""


def _add_missing_columns(engine: Engine) -> None:
    """Bring a catalog made by an earlier VoxelHub up to date (``create_all`` only adds tables)."""
    from sqlalchemy import inspect, text

    inspector = inspect(engine)
    for table, columns in _ADDED_COLUMNS.items():
        present = {c["name"] for c in inspector.get_columns(table)}
        for name, sql_type in columns.items():
            if name not in present:
                with engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))


_WIDENED_COLUMNS = {
    "patients": ("patient_key", "patient_name", "birth_date"),
    "studies": ("accession_number",),
}
"""VARCHAR(n) columns of earlier catalogs that now hold sealed values (TEXT)."""


def _widen_sealed_columns(engine: Engine) -> None:
    """PostgreSQL: make the columns a sealed value goes into TEXT (SQLite enforces no length)."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as conn:
        narrow = {
            (str(t), str(c))
            for t, c in conn.execute(
                sql_text(
                    "SELECT table_name, column_name FROM information_schema.columns WHERE "
                    "table_schema = current_schema() AND character_maximum_length IS NOT NULL"
                )
            )
        }
    for table, columns in _WIDENED_COLUMNS.items():
        for column in columns:
            if (table, column) in narrow:
                with engine.begin() as conn:
                    conn.execute(sql_text(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE TEXT"))


def _index_names(engine: Engine) -> set[str]:
    """Names of the catalog's indexes (the inspector skips expression indexes on SQLite)."""
    queries = {
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'index'",
        "postgresql": "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()",
    }
    query = queries.get(engine.dialect.name)
    if query is None:
        from sqlalchemy import inspect

        inspector = inspect(engine)
        return {
            str(ix["name"])
            for table in inspector.get_table_names()
            for ix in inspector.get_indexes(table)
        }
    with engine.connect() as conn:
        return set(conn.scalars(sql_text(query)))


_REPLACED_INDEXES = {
    "ix_studies_uid_id": "ix_studies_uid_id_patient",
    "ix_studies_date_uid_id": "ix_studies_date_uid_id_patient",
}
"""Indexes of earlier catalogs → the index that replaced them (dropped once it exists)."""


def _add_missing_indexes(engine: Engine) -> None:
    """Create the indexes of the schema an existing catalog lacks (``create_all`` skips them),
    then drop those they replace (every write would keep updating them)."""
    from sqlalchemy.schema import CreateIndex

    present = _index_names(engine)
    for table in Base.metadata.sorted_tables:
        for index in table.indexes:
            if index.name in present:
                continue
            try:
                with engine.begin() as conn:
                    conn.execute(CreateIndex(index, if_not_exists=True))
            except DBAPIError:  # another process created it at the same moment
                if index.name not in _index_names(engine):
                    raise
            present.add(str(index.name))
    for old, new in _REPLACED_INDEXES.items():
        if old in present and new in present:
            with engine.begin() as conn:
                conn.execute(sql_text(f"DROP INDEX IF EXISTS {old}"))


# -- full-text and flag indexes ------------------------------------------------------------------
#
# SQLite: FTS5 tables with the trigram tokenizer, external content over volumes.description and
# studies.description, and a volume_flags table (flag, volume_id) over the JSON flags; all kept
# in sync by triggers, so every writer (this VoxelHub, an older one, a bulk insert) keeps them
# right.  PostgreSQL: GIN indexes, pg_trgm on the descriptions (ILIKE uses them) and jsonb_path_ops
# on the flags.  Queries fall back to LIKE / json_each where these are missing (a catalog made by
# an earlier VoxelHub and opened read-only, or a SQLite without FTS5 trigrams).

_search_metadata = MetaData()
_volumes_fts = Table(
    "volumes_fts", _search_metadata, Column("rowid", Integer), Column("volumes_fts", Text)
)
_studies_fts = Table(
    "studies_fts", _search_metadata, Column("rowid", Integer), Column("studies_fts", Text)
)
_volume_flags = Table(
    "volume_flags", _search_metadata, Column("flag", Text), Column("volume_id", Integer)
)

FTS_MIN_CHARS = 3
"""Shortest text the trigram index can find; shorter searches scan with LIKE."""


def _fts_ddl(table: str) -> list[str]:
    """An external-content trigram FTS5 table over ``table.description`` and its triggers."""
    fts = f"{table}_fts"
    insert = f"INSERT INTO {fts}(rowid, description) VALUES (new.id, new.description);"
    delete = (
        f"INSERT INTO {fts}({fts}, rowid, description) VALUES ('delete', old.id, old.description);"
    )
    return [
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {fts} USING fts5(description, content='{table}', "
        "content_rowid='id', tokenize='trigram')",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_insert AFTER INSERT ON {table} BEGIN {insert} END",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_delete AFTER DELETE ON {table} BEGIN {delete} END",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_update AFTER UPDATE OF id, description ON {table} "
        f"BEGIN {delete} {insert} END",
    ]


_FLAGS_OF_NEW = (
    "INSERT OR IGNORE INTO volume_flags (flag, volume_id) SELECT value, new.id FROM "
    "json_each(CASE WHEN json_valid(new.flags) THEN new.flags ELSE '[]' END) WHERE type = 'text';"
)
_FLAGS_DDL = [
    "CREATE TABLE IF NOT EXISTS volume_flags (flag TEXT NOT NULL, volume_id INTEGER NOT NULL, "
    "PRIMARY KEY (flag, volume_id)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS ix_volume_flags_volume_id ON volume_flags (volume_id)",
    "CREATE TRIGGER IF NOT EXISTS volume_flags_insert AFTER INSERT ON volumes BEGIN "
    f"{_FLAGS_OF_NEW} END",
    "CREATE TRIGGER IF NOT EXISTS volume_flags_delete AFTER DELETE ON volumes BEGIN "
    "DELETE FROM volume_flags WHERE volume_id = old.id; END",
    "CREATE TRIGGER IF NOT EXISTS volume_flags_update AFTER UPDATE OF id, flags ON volumes BEGIN "
    f"DELETE FROM volume_flags WHERE volume_id = old.id; {_FLAGS_OF_NEW} END",
]
_FLAGS_BACKFILL = [
    "DELETE FROM volume_flags",
    "INSERT OR IGNORE INTO volume_flags (flag, volume_id) SELECT j.value, v.id FROM volumes v, "
    "json_each(CASE WHEN json_valid(v.flags) THEN v.flags ELSE '[]' END) j WHERE j.type = 'text'",
]
_SQLITE_SEARCH_OBJECTS = {
    "volumes_fts",
    "volumes_fts_insert",
    "volumes_fts_delete",
    "volumes_fts_update",
    "studies_fts",
    "studies_fts_insert",
    "studies_fts_delete",
    "studies_fts_update",
    "volume_flags",
    "ix_volume_flags_volume_id",
    "volume_flags_insert",
    "volume_flags_delete",
    "volume_flags_update",
}


@cache
def sqlite_has_trigram() -> bool:
    """Whether this SQLite has FTS5 with the trigram tokenizer (3.34+) and JSON functions."""
    if sqlite3.sqlite_version_info < (3, 34):
        return False
    try:
        conn = sqlite3.connect(":memory:")
        try:
            conn.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='trigram')")
            conn.execute("SELECT json_valid('[]')")
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return True


def _sqlite_names(cursor: Any) -> set[str]:
    cursor.execute("SELECT name FROM sqlite_master")
    return {row[0] for row in cursor.fetchall()}


def _add_sqlite_search(engine: Engine) -> None:
    """Create the FTS5 tables, the flag table and their triggers, and fill them (once).

    One ``BEGIN IMMEDIATE`` transaction: a concurrent writer waits, then its rows reach the new
    tables through the triggers; a concurrent opener finds everything there.
    """
    wanted = set(_SQLITE_SEARCH_OBJECTS)
    if not sqlite_has_trigram():
        wanted = {n for n in wanted if not n.startswith(("volumes_fts", "studies_fts"))}
    raw = engine.raw_connection()
    try:
        dbapi = raw.driver_connection
        assert dbapi is not None
        cursor = dbapi.cursor()
        if wanted <= _sqlite_names(cursor):
            return
        isolation = dbapi.isolation_level
        dbapi.isolation_level = None  # explicit transaction control below
        try:
            cursor.execute("BEGIN IMMEDIATE")
            try:
                missing = wanted - _sqlite_names(cursor)
                if missing & {"volume_flags", "volume_flags_insert", "volume_flags_update"}:
                    for statement in [*_FLAGS_DDL, *_FLAGS_BACKFILL]:
                        cursor.execute(statement)
                for table in ("volumes", "studies"):
                    if any(n.startswith(f"{table}_fts") for n in missing):
                        for statement in _fts_ddl(table):
                            cursor.execute(statement)
                        cursor.execute(f"INSERT INTO {table}_fts({table}_fts) VALUES ('rebuild')")
                if missing:
                    log.info("catalog: created %s", ", ".join(sorted(missing)))
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
        finally:
            dbapi.isolation_level = isolation
    finally:
        raw.close()


_POSTGRES_TRGM_INDEXES = {
    "ix_volumes_description_trgm": "volumes USING gin (description gin_trgm_ops)",
    "ix_studies_description_trgm": "studies USING gin (description gin_trgm_ops)",
}
_POSTGRES_FLAGS_INDEX = {
    "ix_volumes_flags_gin": "volumes USING gin ((flags::jsonb) jsonb_path_ops)"
}


def _add_postgres_search(engine: Engine) -> None:
    """GIN indexes: pg_trgm on the descriptions (if the extension can be had), jsonb on flags."""

    def present() -> set[str]:
        with engine.connect() as conn:
            return set(
                conn.scalars(
                    sql_text(
                        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
                        "AND tablename IN ('volumes', 'studies')"
                    )
                )
            )

    have = present()
    wanted = {**_POSTGRES_TRGM_INDEXES, **_POSTGRES_FLAGS_INDEX}
    if set(wanted) <= have:
        return
    if set(_POSTGRES_TRGM_INDEXES) - have:
        try:
            with engine.begin() as conn:
                conn.execute(sql_text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        except DBAPIError as exc:
            with engine.connect() as conn:
                has_trgm = conn.scalar(
                    sql_text("SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'")
                )
            if not has_trgm:
                log.warning(
                    "catalog: no pg_trgm (%s); text search scans with ILIKE",
                    str(exc.orig).strip().splitlines()[0],
                )
                wanted = dict(_POSTGRES_FLAGS_INDEX)
    for name, spec in wanted.items():
        if name in have:
            continue
        try:
            with engine.begin() as conn:
                conn.execute(sql_text(f"CREATE INDEX IF NOT EXISTS {name} ON {spec}"))
        except DBAPIError:  # created by another process at the same moment
            if name not in present():
                raise


def refresh_statistics(engine: Engine) -> None:
    """SQLite: ``ANALYZE`` when the volumes have no statistics yet or doubled (halved) since.

    The query planner needs them to walk the ordered index for a common filter (a project,
    a modality) rather than sort every matching row; 50 ms at 100,000 volumes.
    PostgreSQL's autovacuum keeps its own.
    """
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        count = conn.scalar(select(func.count()).select_from(Volume)) or 0
        try:
            stat = conn.scalar(
                sql_text("SELECT stat FROM sqlite_stat1 WHERE tbl = 'volumes' LIMIT 1")
            )
        except DBAPIError:  # never analyzed: no sqlite_stat1 table
            stat = None
    analyzed = int(str(stat).split()[0]) if stat else 0
    if count and (not analyzed or count > 2 * analyzed or 2 * count < analyzed):
        with engine.begin() as conn:
            conn.execute(sql_text("ANALYZE"))


def _add_search_indexes(engine: Engine) -> None:
    """Full-text and flag indexes of a writable catalog (created and backfilled once)."""
    if engine.dialect.name == "sqlite":
        _add_sqlite_search(engine)
        refresh_statistics(engine)
    elif engine.dialect.name == "postgresql":
        _add_postgres_search(engine)


def _sealed_values(
    sealing: ColumnSealer, table: str, values: dict[str, Any], key_id: str
) -> dict[str, Any]:
    """``values`` of a ``table`` row with its identifying columns sealed under ``key_id``."""
    from voxelhub.catalog_sealing import SEALED_COLUMNS

    return {
        k: sealing.seal_value(table, k, v, key_id) if (table, k) in SEALED_COLUMNS else v
        for k, v in values.items()
    }


def _object_series(values: list[Any], index: Any) -> Any:
    """``values`` as a pandas Series on ``index`` (lists stay one cell each)."""
    import pandas as pd

    return pd.Series(values, index=index, dtype=object)


def _whole_number(name: str, value: Any) -> int:
    """``value`` as an int ≥ 0 (numpy integers too); :class:`CatalogError` if it is not one."""
    try:
        number = operator.index(value)
    except TypeError:
        raise CatalogError(f"{name} must be a whole number, not {value!r}") from None
    if isinstance(value, bool) or number < 0:
        raise CatalogError(f"{name} must be a whole number ≥ 0, not {value!r}")
    return number


def _names(names: Sequence[str] | str) -> list[str]:
    return [names] if isinstance(names, str) else [str(n) for n in names]


def _like_pattern(text: str) -> str:
    """``%text%`` with LIKE's wildcards escaped (escape character ``/``): a plain substring."""
    escaped = text.replace("/", "//").replace("%", "/%").replace("_", "/_")
    return f"%{escaped}%"


def _all_sealed(value: object) -> bool:
    """A sealed column's stored value (a list: each item) is sealed."""
    from voxelhub.catalog_sealing import is_sealed

    items = value if isinstance(value, list) else [value]
    return all(is_sealed(v) for v in items)


def _fts_phrase(text: str) -> str:
    """An FTS5 query for ``text`` as one phrase: with trigrams, a case-insensitive substring."""
    return '"' + text.replace('"', '""') + '"'


# -- keyset paging cursors -------------------------------------------------------------------------

_CURSOR_KEY = b"voxelhub catalog cursor 1"
_CURSOR_DIGEST = 8


def encode_cursor(kind: str, values: Sequence[Any]) -> str:
    """An opaque, URL-safe cursor: the sort key of the last row of a page, with a checksum.

    The checksum catches damaged or hand-edited cursors; it is not a secret (every query still
    applies all its filters, so a forged cursor can only move the starting point).
    """
    payload = json.dumps([kind, *values], separators=(",", ":"), ensure_ascii=False).encode()
    digest = hashlib.blake2b(payload, digest_size=_CURSOR_DIGEST, key=_CURSOR_KEY).digest()
    return base64.urlsafe_b64encode(digest + payload).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, kind: str, types: Sequence[type]) -> list[Any]:
    """The values of a cursor made by :func:`encode_cursor`; :class:`CatalogError` if it is not."""

    def bad(why: str) -> CatalogError:
        shown = (
            repr(cursor[:40] + ("…" if len(cursor) > 40 else ""))
            if isinstance(cursor, str)
            else type(cursor).__name__
        )
        return CatalogError(
            f"invalid paging cursor {shown}: {why}; use the next_cursor of a previous page, "
            "or start again without after="
        )

    if not isinstance(cursor, str) or not cursor or len(cursor) > 4096:
        raise bad("not a cursor string")
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise bad("not URL-safe base64") from None
    digest, payload = raw[:_CURSOR_DIGEST], raw[_CURSOR_DIGEST:]
    expected = hashlib.blake2b(payload, digest_size=_CURSOR_DIGEST, key=_CURSOR_KEY).digest()
    if len(digest) != _CURSOR_DIGEST or not hmac.compare_digest(digest, expected):
        raise bad("damaged or edited")
    try:
        values = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise bad("unreadable") from None
    if not isinstance(values, list) or not values or values[0] != kind:
        found = values[0] if isinstance(values, list) and values else None
        raise bad(f"a cursor of {found!r}, not of {kind}()")
    values = values[1:]
    if len(values) != len(types) or not all(
        isinstance(v, t) and not isinstance(v, bool) for v, t in zip(values, types, strict=False)
    ):
        raise bad("unexpected values")
    return values


class Catalog:
    """Query and update the catalog of one store.

    Parameters
    ----------
    location
        The store the catalog describes.
    url
        SQLAlchemy URL; default SQLite inside a local store.
    create
        Create the tables if missing (ingest does; readers need not).
    """

    def __init__(self, location: Location, url: str | None = None, *, create: bool = True):
        self.location = location
        self.url = url or default_catalog_url(location)
        self.engine = make_engine(self.url)
        self.read_only = "mode=ro" in self.url
        if create and not self.read_only:
            if self.engine.dialect.name == "sqlite":
                location.ensure_root()
            Base.metadata.create_all(self.engine)
            _add_missing_columns(self.engine)
            _widen_sealed_columns(self.engine)
            _add_missing_indexes(self.engine)
            _add_search_indexes(self.engine)

    def __repr__(self) -> str:
        return f"Catalog(store={self.location.url!r}, url={self.engine.url!r})"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error."""
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    def close(self) -> None:
        self.engine.dispose()

    # -- writes ---------------------------------------------------------------------------------
    def ensure_project(
        self, name: str, *, deidentify: bool | None = None, encrypt: bool | None = None
    ) -> Project:
        """Get or create a project; a project's de-identification and encryption settings never
        silently flip (encryption may be turned on only while the project holds no volume)."""
        with self.session() as s:
            project = s.scalar(select(Project).where(Project.name == name))
            if project is None:
                project = Project(name=name, deidentify=bool(deidentify), encrypted=bool(encrypt))
                s.add(project)
                s.flush()
            elif encrypt is not None and project.encrypted != encrypt:
                if project.encrypted:
                    raise EncryptionSettingError(
                        f"project {name!r} is encrypted; its volumes cannot be stored in the clear"
                    )
                held = s.scalar(
                    select(func.count(Volume.id))
                    .join(Study, Volume.study_id == Study.id)
                    .join(Patient, Study.patient_id == Patient.id)
                    .where(Patient.project_id == project.id)
                )
                if held:
                    raise EncryptionSettingError(
                        f"project {name!r} already holds {held} volume(s) in the clear; encrypt a "
                        "new project and ingest into it instead (no project is half encrypted)"
                    )
                project.encrypted = True
                s.flush()
            elif deidentify is not None and project.deidentify != deidentify:
                if project.deidentify and not deidentify:
                    raise CatalogError(
                        f"project {name!r} de-identifies its data; ingest without --deidentify "
                        "would store identifiable values in it"
                    )
                raise CatalogError(
                    f"project {name!r} already holds identifiable data; create a new project "
                    "for de-identified data instead"
                )
            return project

    def find_volume(self, volume_uid: str) -> Volume | None:
        with self.session() as s:
            return s.scalar(select(Volume).where(Volume.volume_uid == volume_uid))

    def record_volume(
        self,
        project: Project,
        patient: dict[str, str],
        study: dict[str, str],
        volume: dict[str, Any],
    ) -> str | None:
        """Insert or replace a volume row with its patient and study, in one transaction.

        Returns the store path of the version it replaced (for the caller to delete), if any.
        An encrypted identifiable project's identifying values are sealed first, and its
        patient is found by the blind index of the patient ID (:mod:`voxelhub.catalog_sealing`).
        """
        same_patient: Any = Patient.patient_key == patient["patient_key"]
        if project.encrypted and not project.deidentify:
            from voxelhub.catalog_sealing import sealer

            sealing = sealer(project.name, self.location)
            key_id = sealing.current_key_id()
            same_patient = Patient.patient_key_index.in_(
                sealing.blind_indexes(patient["patient_key"])
            )
            patient = {
                **_sealed_values(sealing, "patients", patient, key_id),
                "patient_key_index": sealing.blind_index(patient["patient_key"], key_id),
            }
            study = _sealed_values(sealing, "studies", study, key_id)
            volume = _sealed_values(sealing, "volumes", volume, key_id)
        with self.session() as s:
            p = s.scalar(select(Patient).where(Patient.project_id == project.id, same_patient))
            if p is None:
                p = Patient(project_id=project.id, **patient)
                s.add(p)
                s.flush()
            st = s.scalar(
                select(Study).where(Study.patient_id == p.id, Study.study_uid == study["study_uid"])
            )
            if st is None:
                st = Study(patient_id=p.id, **study)
                s.add(st)
                s.flush()
            old = s.scalar(select(Volume).where(Volume.volume_uid == volume["volume_uid"]))
            replaced = None
            if old is not None:
                replaced = old.store_path
                s.delete(old)
                s.flush()
            s.add(Volume(study_id=st.id, **volume))
            return replaced if replaced != volume["store_path"] else None

    def record_report(
        self, project: Project, report: dict[str, Any], rejected: Sequence[dict[str, str]]
    ) -> int:
        """Store an ingest report and its rejected files together; return the report id (an
        encrypted identifiable project's source paths and reasons sealed)."""
        if project.encrypted and not project.deidentify:
            from voxelhub.catalog_sealing import sealer

            sealing = sealer(project.name, self.location)
            key_id = sealing.current_key_id()
            report = _sealed_values(sealing, "ingest_reports", report, key_id)
            rejected = [
                _sealed_values(sealing, "rejected_files", dict(item), key_id) for item in rejected
            ]
        with self.session() as s:
            r = IngestReport(project_id=project.id, **report)
            s.add(r)
            s.flush()
            for item in rejected:
                s.add(RejectedFile(report_id=r.id, **item))
            report_id = r.id
        try:  # the end of an ingest: keep the planner's numbers up to date
            refresh_statistics(self.engine)
        except DBAPIError as exc:  # busy: the next ingest or writer's open will do it
            log.warning("catalog: statistics not refreshed: %s", exc.orig)
        return report_id

    def delete_volume(self, uid: str) -> DeletedVolume:
        """Remove a volume: its catalog row first, then its tree in the store (labels included).

        One transaction removes the row, its study and patient when they hold nothing else, and
        its stored feature rows, so from then on no query lists it.  The tree is then renamed
        into the temporary area and removed there: a crash in between leaves an unlisted or a
        temporary tree, which ``voxelhub fsck`` reports and ``--repair`` collects, never a
        listed half-volume.  ``uid``: a volume UID, or a SeriesInstanceUID that was not split.
        """
        if self.read_only:
            raise CatalogError(f"{self!r} is open read-only: delete as the store's owner")
        with self.session() as s:
            volume = s.scalar(select(Volume).where(Volume.volume_uid == uid))
            if volume is None:
                matches = s.scalars(select(Volume).where(Volume.series_uid == uid)).all()
                if len(matches) > 1:
                    splits = ", ".join(v.volume_uid for v in matches)
                    raise NotFound(
                        f"series {uid!r} was split into {len(matches)} volumes; delete each by "
                        f"volume_uid: {splits}"
                    )
                volume = matches[0] if matches else None
            if volume is None:
                raise NotFound(f"no volume or series {uid!r} in {self!r}")
            study = volume.study
            patient = study.patient
            deleted = DeletedVolume(
                volume_uid=volume.volume_uid,
                store_path=volume.store_path,
                project=patient.project.name,
                patient=self.patient_id_of(patient.project.name, patient.patient_key),
                study_uid=study.study_uid,
                feature_rows=0,
            )
            series_uid = volume.series_uid
            s.delete(volume)
            s.flush()
            if not s.scalar(select(func.count()).where(Volume.study_id == study.id)):
                s.delete(study)
                s.flush()
                if not s.scalar(select(func.count()).where(Study.patient_id == patient.id)):
                    s.delete(patient)
            names = [deleted.volume_uid]
            if not s.scalar(select(func.count()).where(Volume.series_uid == series_uid)):
                names.append(series_uid)  # rows stored under the series UID of an unsplit one
            rows = self._delete_feature_rows(s, names)
        self._remove_tree(deleted.store_path)
        return replace(deleted, feature_rows=rows)

    # -- sealed columns (encrypted identifiable projects) ------------------------------------------
    def sealed_projects(self) -> frozenset[str]:
        """Projects whose identifying columns are sealed: encrypted and not de-identified."""
        with self.engine.connect() as conn:
            return frozenset(
                conn.scalars(
                    select(Project.name).where(
                        Project.encrypted.is_(True), Project.deidentify.is_(False)
                    )
                )
            )

    def _sealed_in_scope(self, project: str | None, projects: Sequence[str] | None) -> list[str]:
        sealed = set(self.sealed_projects())
        if project:
            sealed &= {project}
        if projects is not None:
            sealed &= set(_names(projects))
        return sorted(sealed)

    def patient_id_of(self, project: str, stored: str) -> str:
        """A patient ID as the catalog stores it → the patient ID (opened if sealed; as stored
        in a process holding no keys)."""
        if project not in self.sealed_projects():
            return stored
        from voxelhub.catalog_sealing import sealer

        sealing = sealer(project, self.location)
        return stored if sealing.ring is None else sealing.unseal("patients", "patient_key", stored)

    def _unseal_frame(
        self, frame: pd.DataFrame, columns: dict[str, tuple[str, str]], *, opaque: bool = False
    ) -> Any:
        """Open the sealed values of ``frame`` (its rows of sealed projects) in place; with
        ``opaque``, a process holding no keys at all gets them as stored (still sealed)."""
        if frame.empty or "project" not in frame:
            return frame
        rows = frame["project"].isin(self.sealed_projects())
        if not rows.any():
            return frame
        from voxelhub.catalog_sealing import sealer

        names = frame.loc[rows, "project"]
        sealers = {str(p): sealer(str(p), self.location) for p in set(names)}
        if opaque and any(s.ring is None for s in sealers.values()):
            return frame
        for name, (table, column) in columns.items():
            if name in frame:
                opened = [
                    sealers[str(p)].unseal(table, column, str(v))
                    for p, v in zip(names, frame.loc[rows, name], strict=True)
                ]
                frame[name] = frame[name].astype(object)
                frame.loc[rows, name] = opened
        return frame

    def _sealed_text_matches(self, text: str, sealed: list[str], kind: str) -> list[int]:
        """Row ids (volumes for series, studies for studies) of ``sealed`` projects whose
        description (or study's) holds ``text``: each opened here, since no index can search
        ciphertext (a scan of those projects' rows per search)."""
        from voxelhub.catalog_sealing import sealer

        needle = text.casefold()
        stmt: Any
        if kind == "series":
            stmt = select(Volume.id, Project.name, Volume.description, Study.description)
            stmt = stmt.join(Study, Volume.study_id == Study.id)
        else:
            stmt = select(Study.id, Project.name, literal_column("NULL"), Study.description)
        stmt = (
            stmt.join(Patient, Study.patient_id == Patient.id)
            .join(Project, Patient.project_id == Project.id)
            .where(Project.name.in_(sealed))
        )
        sealers = {p: sealer(p, self.location) for p in sealed}
        studies: dict[str, bool] = {}
        hits = []
        with self.engine.connect() as conn:
            for row_id, name, own, of_study in conn.execute(stmt):
                sealing = sealers[name]
                if of_study not in studies:
                    opened = sealing.unseal("studies", "description", of_study)
                    studies[of_study] = needle in opened.casefold()
                if studies[of_study] or (
                    own is not None
                    and needle in sealing.unseal("volumes", "description", own).casefold()
                ):
                    hits.append(int(row_id))
        return hits

    def _text_clause(
        self, clause: Any, text: str, project: str | None, projects: Sequence[str] | None, kind: str
    ) -> Any:
        """``clause`` (the SQL text search) for clear projects, opened values for sealed ones."""
        sealed = self._sealed_in_scope(project, projects)
        if not sealed:
            return clause
        ids = Volume.id if kind == "series" else Study.id
        return or_(
            and_(clause, Project.name.not_in(sealed)),
            # the ids inline, not as one parameter each (SQLite allows 32,766 at most)
            ids.in_(
                bindparam(
                    "sealed_matches",
                    self._sealed_text_matches(text, sealed, kind),
                    expanding=True,
                    literal_execute=True,
                )
            ),
        )

    def _patient_clause(
        self, patient: str, project: str | None, projects: Sequence[str] | None
    ) -> Any:
        """Rows of patient ``patient``: by value, or in sealed projects by blind index."""
        clause = Patient.patient_key == patient
        sealed = self._sealed_in_scope(project, projects)
        if not sealed:
            return clause
        tokens = self._blind_indexes(patient, sealed)
        return or_(and_(clause, Project.name.not_in(sealed)), Patient.patient_key_index.in_(tokens))

    def _blind_indexes(self, patient: str, sealed: Sequence[str]) -> list[str]:
        """Patient ID ``patient``'s blind index in each of the ``sealed`` projects, under every
        data key version; :class:`MissingKey` naming project and key without the keys."""
        from voxelhub.catalog_sealing import sealer

        tokens: list[str] = []
        for name in sealed:
            sealing = sealer(name, self.location)
            if sealing.ring is None:
                raise sealing.no_keys(", ".join(sorted(self.sealed_key_ids(name))))
            tokens += sealing.blind_indexes(patient)
        return tokens

    def audit_names(self, patient: str, *, project: str | None = None) -> list[str]:
        """How the data service's audit trail names patient ``patient``: the ID itself, and in
        sealed projects (``project``, else every one) its blind index under each data key
        version, which is what the service records there instead of the ID (needs the keys)."""
        return [patient, *self._blind_indexes(patient, self._sealed_in_scope(project, None))]

    def identities(
        self, *, project: str | None = None, projects: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Who each study is of: patient ID, name, sex, birth date, accession number and study
        description (opened where sealed); one row per study, in study order."""
        stmt = (
            select(
                Project.name.label("project"),
                Patient.patient_key.label("patient_id"),
                Patient.patient_name,
                Patient.sex,
                Patient.birth_date,
                Study.study_uid,
                Study.study_date,
                Study.accession_number,
                Study.description,
            )
            .join(Patient, Study.patient_id == Patient.id)
            .join(Project, Patient.project_id == Project.id)
            .order_by(Study.study_date, Study.study_uid, Study.id)
        )
        if project:
            stmt = stmt.where(Project.name == project)
        if projects is not None:
            stmt = stmt.where(Project.name.in_(_names(projects)))
        return self._unseal_frame(
            self._frame(stmt),
            {
                "patient_id": ("patients", "patient_key"),
                "patient_name": ("patients", "patient_name"),
                "birth_date": ("patients", "birth_date"),
                "accession_number": ("studies", "accession_number"),
                "description": ("studies", "description"),
            },
        )

    def _sealed_rows(self, s: Session, project: str) -> Iterator[tuple[Any, str]]:
        """Every ORM row of ``project`` that holds sealed values, with its table name."""
        from sqlalchemy.orm import selectinload

        patients = s.scalars(
            select(Patient)
            .join(Project, Patient.project_id == Project.id)
            .where(Project.name == project)
            .options(selectinload(Patient.studies).selectinload(Study.volumes))
        ).all()
        for patient in patients:
            yield patient, "patients"
            for study in patient.studies:
                yield study, "studies"
                for volume in study.volumes:
                    yield volume, "volumes"
        reports = s.scalars(
            select(IngestReport)
            .join(Project, IngestReport.project_id == Project.id)
            .where(Project.name == project)
            .options(selectinload(IngestReport.rejected))
        ).all()
        for report in reports:
            yield report, "ingest_reports"
            for item in report.rejected:
                yield item, "rejected_files"

    def sealed_key_ids(self, project: str) -> set[str]:
        """Ids of the data keys ``project``'s sealed catalog values (and blind index) use."""
        from voxelhub.catalog_sealing import SEALED_COLUMNS, key_ids_of

        found: set[str] = set()
        with self.session() as s:
            for row, table in self._sealed_rows(s, project):
                values = [getattr(row, c) for t, c in SEALED_COLUMNS if t == table]
                if table == "patients":
                    values.append(row.patient_key_index)
                for value in values:
                    found |= key_ids_of(value)
        return found

    def reseal(self, project: str) -> int:
        """Seal ``project``'s identifying columns again under its current data key and rebuild
        the blind index (after a rotation); return how many rows changed.

        One transaction: readers meanwhile see the old values, which the old key (still in the
        ring until :func:`~voxelhub.store.reencrypt.retire_old_keys`) opens."""
        if project not in self.sealed_projects():
            return 0
        from voxelhub.catalog_sealing import SEALED_COLUMNS, key_id_of, key_ids_of, sealer

        sealing = sealer(project, self.location)
        current = sealing.current_key_id()
        changed = 0
        with self.session() as s:
            rows = list(self._sealed_rows(s, project))
            # a catalog written before sealed columns existed: its patients have no blind
            # index and its values are clear; they are sealed now (an explicit admin step)
            legacy = any(t == "patients" and r.patient_key_index is None for r, t in rows)
            for row, table in rows:
                columns = sorted(c for t, c in SEALED_COLUMNS if t == table)
                clear = {c for c in columns if legacy and not _all_sealed(getattr(row, c))}
                stale = clear | {c for c in columns if key_ids_of(getattr(row, c)) - {current}}
                if table == "patients" and key_id_of(row.patient_key_index) != current:
                    stale.add("patient_key")
                for column in sorted(stale):
                    raw = getattr(row, column)
                    value = raw if column in clear else sealing.unseal_value(table, column, raw)
                    setattr(row, column, sealing.seal_value(table, column, value, current))
                    if table == "patients" and column == "patient_key":
                        row.patient_key_index = sealing.blind_index(str(value), current)
                changed += bool(stale)
        if legacy:
            self._purge_clear_remnants()
        return changed

    def _purge_clear_remnants(self) -> None:
        """After clear values were sealed: SQLite's full-text index is rebuilt from the sealed
        rows and the file rewritten (VACUUM), so no free page, old index segment or WAL frame
        keeps the plaintext.  PostgreSQL keeps old row versions until ``VACUUM FULL``, which the
        operator runs (README)."""
        if self.engine.dialect.name != "sqlite":
            log.warning(
                "catalog: clear values were sealed; run VACUUM FULL on the PostgreSQL catalog "
                "so that no old row version keeps them"
            )
            return
        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            cursor = raw.cursor()
            for table in ("volumes", "studies"):
                if f"{table}_fts" in self._sqlite_search:
                    cursor.execute(f"INSERT INTO {table}_fts({table}_fts) VALUES ('rebuild')")
            raw.commit()
            cursor.execute("VACUUM")
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cursor.close()

    @staticmethod
    def _delete_feature_rows(s: Session, series: list[str]) -> int:
        from sqlalchemy import bindparam, inspect

        conn = s.connection()
        if not inspect(conn).has_table(_FEATURES_TABLE):
            return 0
        stmt = sql_text(f"DELETE FROM {_FEATURES_TABLE} WHERE series IN :names").bindparams(
            bindparam("names", expanding=True)
        )
        return int(conn.execute(stmt, {"names": series}).rowcount or 0)

    def _remove_tree(self, store_path: str) -> None:
        """Rename a volume tree no row lists any more into the temporary area, then remove it."""
        trash = self.location.new_temporary(".deleted")
        try:
            self.location.move_tree(store_path, trash)
        except FileNotFoundError:
            return  # already gone (an earlier delete that crashed after the rename)
        except OSError as exc:
            log.warning(
                "catalog: %s is no longer listed but could not be removed (%s); "
                "`voxelhub fsck --repair` collects it",
                store_path,
                exc,
            )
            return
        self.location.remove(trash)

    def project_settings(self, name: str) -> ProjectSettings:
        """The de-identification settings of project ``name``."""
        with self.session() as s:
            project = s.scalar(select(Project).where(Project.name == name))
            if project is None:
                raise NotFound(f"no project {name!r} in {self!r}")
            return self._project_settings(s, project)

    def set_project_settings(self, name: str, *, deidentify: bool) -> ProjectSettings:
        """Set whether ingest de-identifies project ``name`` (a new name creates the project).

        Refused with :class:`~voxelhub.errors.SettingLocked` while the project holds volumes:
        they were ingested under the other setting, so the flag would misdescribe them (as
        :meth:`ensure_project` refuses an ingest that asks for the other setting).
        """
        if self.read_only:
            raise CatalogError(f"{self!r} is open read-only: change settings as its owner")
        if not isinstance(deidentify, bool):
            raise CatalogError(f"deidentify must be true or false, not {deidentify!r}")
        with self.session() as s:
            project = s.scalar(select(Project).where(Project.name == name))
            if project is None:
                project = Project(name=name, deidentify=deidentify)
                s.add(project)
                s.flush()
            elif project.deidentify != deidentify:
                current = self._project_settings(s, project)
                if current.locked:
                    now = "de-identifies" if project.deidentify else "holds identifiable"
                    raise SettingLocked(
                        f"project {name!r} {now} data in {current.volumes} volume(s); "
                        "de-identification can change only while it holds none (delete them, "
                        "or create a new project)"
                    )
                project.deidentify = deidentify
                s.flush()
            return self._project_settings(s, project)

    @staticmethod
    def _project_settings(s: Session, project: Project) -> ProjectSettings:
        volumes = s.scalar(
            select(func.count())
            .select_from(Volume)
            .join(Study, Volume.study_id == Study.id)
            .join(Patient, Study.patient_id == Patient.id)
            .where(Patient.project_id == project.id)
        )
        profile = ""
        if project.deidentify:
            from voxelhub.dicom.deid import PROFILE_NAME

            profile = PROFILE_NAME
        return ProjectSettings(project.name, bool(project.deidentify), int(volumes or 0), profile)

    # -- queries ----------------------------------------------------------------------------------
    def _frame(self, stmt: Any) -> pd.DataFrame:
        import pandas as pd  # imported on first query: ingest alone never needs it

        with self.engine.connect() as conn:
            return pd.read_sql(stmt, conn)

    def projects(self, *, projects: Sequence[str] | None = None) -> pd.DataFrame:
        """Every project (or those named in ``projects``) with its de-identification setting."""
        stmt = select(
            Project.name, Project.deidentify, Project.encrypted, Project.created_at
        ).order_by(Project.id)
        if projects is not None:
            stmt = stmt.where(Project.name.in_(_names(projects)))
        return self._frame(stmt)

    @cached_property
    def _sqlite_search(self) -> frozenset[str]:
        """The search tables this SQLite catalog has (an older catalog opened read-only: none)."""
        if self.engine.dialect.name != "sqlite":
            return frozenset()
        with self.engine.connect() as conn:
            names = set(
                conn.scalars(
                    sql_text(
                        "SELECT name FROM sqlite_master WHERE type = 'table' "
                        "AND name IN ('volumes_fts', 'studies_fts', 'volume_flags')"
                    )
                )
            )
        if not sqlite_has_trigram():
            names -= {"volumes_fts", "studies_fts"}
        return frozenset(names)

    def _uses_fts(self, text: str) -> bool:
        return len(text) >= FTS_MIN_CHARS and "volumes_fts" in self._sqlite_search

    @staticmethod
    def _walk(matches: float, wanted: int | None, total: int | None) -> bool:
        """Walk the ordered index and test each row, or fetch the ``matches`` rows and sort them?

        A page of ``wanted`` rows out of ``total`` walks about ``wanted * total / matches`` rows;
        fetching sorts all ``matches`` (at about twice the cost per row): walking wins when
        ``matches² > wanted * total / 2``.  For a whole listing (no limit) fetching always
        wins.  The planners cannot make this choice themselves: SQLite knows nothing of how
        many rows a MATCH returns, and neither planner can use the indexes of two tables for
        one OR.
        """
        return wanted is not None and matches * matches > wanted * (total or 0) / 2

    def _series_text(self, text: str, wanted: int | None = None) -> Any:
        """Volumes whose description or whose study's description contains ``text``.

        With a page (``wanted`` rows from the start) and an index, the clause depends on how
        many rows match: few, fetch them by the index and sort them; many, walk the ordered
        index and test each row (see :meth:`_walk`).
        """
        pattern = _like_pattern(text)
        anywhere = or_(
            Volume.description.ilike(pattern, escape="/"),
            Study.description.ilike(pattern, escape="/"),
        )
        if self._uses_fts(text):
            return self._series_fts(_fts_phrase(text), wanted)
        if self.engine.dialect.name == "postgresql":
            return self._series_trigrams(pattern, anywhere, wanted)
        return anywhere  # LIKE on every row the query walks

    def _series_fts(self, phrase: str, wanted: int | None) -> Any:
        """SQLite: the FTS5 trigram tables (their counts tell how many rows match)."""
        by_volume = select(_volumes_fts.c.rowid).where(
            _volumes_fts.c.volumes_fts.op("MATCH")(phrase)
        )
        by_study = select(_studies_fts.c.rowid).where(
            _studies_fts.c.studies_fts.op("MATCH")(phrase)
        )
        if wanted is not None:
            with self.engine.connect() as conn:
                volumes, studies, n_volumes, n_studies = conn.execute(
                    select(
                        select(func.count()).select_from(by_volume.subquery()).scalar_subquery(),
                        select(func.count()).select_from(by_study.subquery()).scalar_subquery(),
                        select(func.max(Volume.id)).scalar_subquery(),
                        select(func.max(Study.id)).scalar_subquery(),
                    )
                ).one()
            matches = volumes + studies * (n_volumes or 0) / max(n_studies or 1, 1)
            if self._walk(matches, wanted, n_volumes):  # test each row of the ordered walk
                return or_(Volume.id.in_(by_volume), Study.id.in_(by_study))
        other = Volume.__table__.alias("text_volumes")
        return Volume.id.in_(  # the matching rows first, then sort them
            union(by_volume, select(other.c.id).where(other.c.study_id.in_(by_study)))
        )

    def _series_trigrams(self, pattern: str, anywhere: Any, wanted: int | None) -> Any:
        """PostgreSQL: pg_trgm GIN indexes (the planner's estimate tells how many rows match)."""
        by_volume = Volume.__table__.alias("text_volumes")
        by_study = Volume.__table__.alias("text_study_volumes")
        studies = Study.__table__.alias("text_studies")
        matching = union(
            select(by_volume.c.id).where(by_volume.c.description.ilike(pattern, escape="/")),
            select(by_study.c.id).where(
                by_study.c.study_id.in_(
                    select(studies.c.id).where(studies.c.description.ilike(pattern, escape="/"))
                )
            ),
        )
        if wanted is not None:
            compiled = matching.compile(self.engine)
            with self.engine.connect() as conn:
                plan: Any = conn.exec_driver_sql(
                    "EXPLAIN (FORMAT JSON) " + str(compiled), compiled.params
                ).scalar()
                total = conn.scalar(select(func.max(Volume.id)))
            plan = json.loads(plan) if isinstance(plan, str) else plan
            if self._walk(float(plan[0]["Plan"]["Plan Rows"]), wanted, total):
                return anywhere
        return Volume.id.in_(matching)

    def _study_text(self, text: str) -> Any:
        if self._uses_fts(text) and "studies_fts" in self._sqlite_search:
            return Study.id.in_(
                select(_studies_fts.c.rowid).where(
                    _studies_fts.c.studies_fts.op("MATCH")(_fts_phrase(text))
                )
            )
        return Study.description.ilike(_like_pattern(text), escape="/")

    def _flag(self, flag: str, wanted: int | None = None) -> Any:
        """Volumes whose ``flags`` list holds ``flag`` (the code, exactly)."""
        if self.engine.dialect.name == "postgresql":
            return cast(Volume.flags, JSONB).contains([flag])
        if "volume_flags" in self._sqlite_search:
            flagged = _volume_flags.c.flag == flag
            walk = False
            if wanted is not None:
                with self.engine.connect() as conn:
                    matches, total = conn.execute(
                        select(
                            select(func.count()).where(flagged).scalar_subquery(),
                            select(func.max(Volume.id)).scalar_subquery(),
                        )
                    ).one()
                walk = self._walk(matches, wanted, total)
            if walk:
                return exists().where(flagged, _volume_flags.c.volume_id == Volume.id)
            return Volume.id.in_(select(_volume_flags.c.volume_id).where(flagged))
        if self.engine.dialect.name == "sqlite":
            return sql_text(
                "EXISTS (SELECT 1 FROM json_each(CASE WHEN json_valid(volumes.flags) "
                "THEN volumes.flags ELSE '[]' END) WHERE value = :flag)"
            ).bindparams(flag=flag)
        return Volume.flags.cast(String).like(f'%"{flag}"%')  # other databases: rough

    def _page(
        self,
        stmt: Any,
        kind: str,
        keys: Sequence[Any],
        key_types: Sequence[type],
        *,
        limit: int | None,
        offset: int,
        after: str | None,
    ) -> pd.DataFrame:
        """Run ``stmt`` ordered by ``keys`` after the cursor ``after``, ``limit`` rows at most.

        ``attrs["next_cursor"]`` of the frame is the cursor of the next page, or None when
        this page is the last (or when no ``limit`` was given).
        """
        limit = None if limit is None else _whole_number("limit", limit)
        offset = _whole_number("offset", offset)
        hidden = [f"_key{i}" for i in range(len(keys))]
        if limit is not None:
            stmt = stmt.add_columns(*(k.label(h) for k, h in zip(keys, hidden, strict=True)))
        stmt = stmt.order_by(*keys)
        if after is not None:
            values = decode_cursor(after, kind, key_types)
            stmt = stmt.where(keys[0] >= values[0], tuple_(*keys) > tuple_(*values))
        if limit is not None:
            stmt = stmt.limit(limit + 1)
        if offset:
            stmt = stmt.offset(offset)
        frame = self._frame(stmt)
        cursor = None
        if limit is not None:
            if len(frame) > limit > 0:
                last = [t(frame[h].iat[limit - 1]) for h, t in zip(hidden, key_types, strict=True)]
                cursor = encode_cursor(kind, last)
            frame = frame.iloc[:limit, : frame.shape[1] - len(hidden)]
        frame.attrs["next_cursor"] = cursor
        return frame

    def studies(
        self,
        modality: str | None = None,
        *,
        project: str | None = None,
        patient: str | None = None,
        text: str | None = None,
        projects: Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
        after: str | None = None,
    ) -> pd.DataFrame:
        """Studies, with their patient, project and number of volumes (studies with none: no).

        Ordered by (study date, StudyInstanceUID, row id).  ``projects`` keeps the studies of
        those projects only (an empty list: none); ``text`` is a case-insensitive substring of
        the study description (3+ characters use the trigram index, 1–2 characters scan).
        Paging: ``limit`` rows after ``offset`` rows, or after the ``after`` cursor: the
        frame's ``attrs["next_cursor"]`` of the previous page (None on the last page).
        """
        columns = [
            Project.name.label("project"),
            Patient.patient_key.label("patient_id"),
            Study.study_uid,
            Study.study_date,
            Study.description,
        ]
        if limit is None and not (modality or patient or text):
            # (nearly) every study: count all volumes in one pass over an index
            counts = (
                select(Volume.study_id, func.count().label("volumes"))
                .group_by(Volume.study_id)
                .subquery("volume_counts")
            )
            stmt = (
                select(*columns, counts.c.volumes)
                .select_from(Study)
                .join(counts, counts.c.study_id == Study.id)
            )
        else:  # a page, or few studies: count the volumes of those studies only
            volumes = (
                select(func.count())
                .select_from(Volume)
                .where(Volume.study_id == Study.id)
                .scalar_subquery()
            )
            has_volume: Any
            if modality and limit is None:  # the studies of that modality, then sort them
                has_volume = Study.id.in_(
                    select(Volume.study_id).where(Volume.modality == modality)
                )
            elif modality:  # walk the studies in order, test each
                has_volume = exists().where(
                    Volume.study_id == Study.id, Volume.modality == modality
                )
            else:
                has_volume = exists().where(Volume.study_id == Study.id)
            stmt = select(*columns, volumes.label("volumes")).select_from(Study).where(has_volume)
        stmt = stmt.join(Patient, Study.patient_id == Patient.id).join(
            Project, Patient.project_id == Project.id
        )
        if project:
            stmt = stmt.where(Project.name == project)
        if projects is not None:
            stmt = stmt.where(Project.name.in_(_names(projects)))
        if patient:
            stmt = stmt.where(self._patient_clause(patient, project, projects))
        if text:
            stmt = stmt.where(
                self._text_clause(self._study_text(text), text, project, projects, "studies")
            )
        keys = (Study.study_date, Study.study_uid, Study.id)
        frame = self._page(
            stmt, "studies", keys, (str, str, int), limit=limit, offset=offset, after=after
        )
        return self._unseal_frame(
            frame,
            {"patient_id": ("patients", "patient_key"), "description": ("studies", "description")},
            opaque=True,
        )

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
        projects: Sequence[str] | None = None,
        patient: str | None = None,
        after: str | None = None,
    ) -> pd.DataFrame:
        """Volumes (series and their splits), filtered in SQL, paged by keyset or offset.

        Ordered by (StudyInstanceUID, study row, series number with none first, split, volume
        row): a total order, so pages neither repeat nor skip rows.  Filters: ``study_uid``,
        ``modality``, ``project`` (one name), ``projects`` (only these: an empty list gives
        nothing), ``patient`` (patient key), ``uid`` (volume UID or SeriesInstanceUID),
        ``flag`` (a flag code in the volume's ``flags``, exactly; not the reasons' text) and
        ``text``: a case-insensitive substring of the series or the study description, found
        with the trigram full-text index when it has 3+ characters (SQLite FTS5, PostgreSQL
        pg_trgm) and by scanning with LIKE when shorter (or when the catalog has no index yet).

        Paging: ``limit`` rows, after ``offset`` rows or, faster at any depth, after the
        ``after`` cursor: the ``attrs["next_cursor"]`` of the previous page's frame (an opaque,
        URL-safe string; None on the last page).
        """
        stmt = (
            select(
                Volume.volume_uid,
                Volume.series_uid,
                Volume.series_number,
                Volume.split,
                Volume.modality,
                Volume.body_part,
                Volume.description,
                Volume.slices,
                Volume.timepoints,
                Volume.channels,
                Volume.rows,
                Volume.columns,
                Volume.spacing_z,
                Volume.spacing_y,
                Volume.spacing_x,
                Volume.dtype,
                Volume.flags,
                Volume.reasons,
                Volume.store_path,
                Volume.checksum,
                Study.study_uid,
                Study.study_date,
                Patient.patient_key.label("patient_id"),
                Project.name.label("project"),
            )
            .join(Study, Volume.study_id == Study.id)
            .join(Patient, Study.patient_id == Patient.id)
            .join(Project, Patient.project_id == Project.id)
        )
        if study_uid:
            stmt = stmt.where(Study.study_uid == study_uid)
        if modality:
            stmt = stmt.where(Volume.modality == modality)
        if project:
            stmt = stmt.where(Project.name == project)
        if projects is not None:
            stmt = stmt.where(Project.name.in_(_names(projects)))
        if patient:
            stmt = stmt.where(self._patient_clause(patient, project, projects))
        limit = None if limit is None else _whole_number("limit", limit)
        offset = _whole_number("offset", offset)
        wanted = None if limit is None else offset + limit + 1
        if text:
            stmt = stmt.where(
                self._text_clause(
                    self._series_text(text, wanted), text, project, projects, "series"
                )
            )
        if flag:
            stmt = stmt.where(self._flag(flag, wanted))
        if uid:
            stmt = stmt.where(or_(Volume.volume_uid == uid, Volume.series_uid == uid))
        keys = (Study.study_uid, Study.id, _series_number_key, Volume.split, Volume.id)
        frame = self._page(
            stmt,
            "series",
            keys,
            (str, int, int, str, int),
            limit=limit,
            offset=offset,
            after=after,
        )
        return self._unseal_frame(
            frame,
            {"patient_id": ("patients", "patient_key"), "description": ("volumes", "description")},
            opaque=True,
        )

    def search(self, text: str, **filters: Any) -> pd.DataFrame:
        """Free-text search on series and study descriptions (see :meth:`series`)."""
        return self.series(text=text, **filters)

    def store_paths(self) -> set[str]:
        """Every store path the catalog lists (for consistency checks)."""
        with self.session() as s:
            return set(s.scalars(select(Volume.store_path)))

    def reports(self) -> pd.DataFrame:
        """Ingest reports, newest first (with the keys, an encrypted identifiable project's
        source paths opened)."""
        stmt = select(IngestReport).order_by(IngestReport.id.desc())
        return self._unseal_reports(
            self._frame(stmt), {"paths": "ingest_reports", "non_dicom": "ingest_reports"}
        )

    def rejected(self, report_id: int | None = None) -> pd.DataFrame:
        """Files (and volumes) that could not be ingested, with the reason and the tag."""
        stmt = (
            select(
                RejectedFile.report_id,
                RejectedFile.source,
                RejectedFile.reason,
                RejectedFile.tag,
                RejectedFile.series_uid,
                IngestReport.project_id,
            )
            .join(IngestReport, RejectedFile.report_id == IngestReport.id)
            .order_by(RejectedFile.id)
        )
        if report_id is not None:
            stmt = stmt.where(RejectedFile.report_id == report_id)
        frame = self._unseal_reports(
            self._frame(stmt), {"source": "rejected_files", "reason": "rejected_files"}
        )
        return frame.drop(columns="project_id")

    def _unseal_reports(self, frame: pd.DataFrame, columns: dict[str, str]) -> Any:
        """Open the sealed columns of report rows (by ``project_id``) of sealed projects."""
        if frame.empty:
            return frame
        with self.engine.connect() as conn:
            ids = dict(
                conn.execute(
                    select(Project.id, Project.name).where(Project.name.in_(self.sealed_projects()))
                ).all()
            )
        rows = frame["project_id"].isin(ids)
        if not rows.any():
            return frame
        from voxelhub.catalog_sealing import sealer

        sealers = {i: sealer(name, self.location) for i, name in ids.items()}
        if any(s.ring is None for s in sealers.values()):
            return frame  # a process with no keys: opaque, as listings are
        for name, table in columns.items():
            opened = [
                sealers[int(i)].unseal_value(table, name, v)
                for i, v in zip(frame.loc[rows, "project_id"], frame.loc[rows, name], strict=True)
            ]
            frame[name] = frame[name].astype(object)
            frame.loc[rows, name] = _object_series(opened, frame.index[rows])
        return frame

    def volume_row(self, uid: str) -> dict[str, Any]:
        """The catalog row of a volume, by volume UID or (unsplit) SeriesInstanceUID."""
        match = self.series(uid=uid)
        if match.empty:
            raise NotFound(f"no volume or series {uid!r} in {self!r}")
        if len(match) > 1:
            splits = ", ".join(f"{r.volume_uid} ({r.split})" for r in match.itertuples())
            raise NotFound(
                f"series {uid!r} was split into {len(match)} volumes; open one by volume_uid: "
                f"{splits}"
            )
        row: dict[str, Any] = {str(k): v for k, v in match.iloc[0].to_dict().items()}
        return row

    def open_series(self, uid_or_row: Any, level: int = 0) -> Any:
        """Open a volume lazily as an ``xarray.DataArray`` (see :func:`voxelhub.open_series`)."""
        return self.stored_volume(uid_or_row).open(level)

    def stored_volume(self, uid_or_row: Any) -> StoredVolume:
        """The typed :class:`~voxelhub.store.stored.StoredVolume` of a UID or catalog row."""
        from voxelhub.store.stored import StoredVolume

        if isinstance(uid_or_row, StoredVolume):
            return uid_or_row
        row = uid_or_row
        if isinstance(row, str):
            row = self.volume_row(row)
        elif hasattr(row, "to_dict"):
            row = row.to_dict()
        return StoredVolume.from_store(self.location, row)

    def thumbnail(self, uid_or_row: Any, index: int | None = None, axis: str = "z") -> bytes:
        """A small grey PNG of slice ``index`` along ``axis`` (see :mod:`voxelhub.store.thumbnail`)."""
        from voxelhub.store.thumbnail import thumbnail_png

        return thumbnail_png(self.stored_volume(uid_or_row), index, axis)
