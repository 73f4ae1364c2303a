"""The catalog: projects, patients, studies, volumes, ingest reports and rejected files.

SQLAlchemy 2 over SQLite (WAL, inside the store) by default, PostgreSQL by URL.  Queries return
pandas DataFrames for notebooks.  A volume row is committed only after its OME-Zarr is complete
and verified, in one transaction with its study and patient, so the catalog never lists a volume
the store does not hold.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.pool import NullPool

from voxelhub.errors import CatalogError, NotFound
from voxelhub.store.location import Location

if TYPE_CHECKING:
    import pandas as pd

    from voxelhub.store.stored import StoredVolume

CATALOG_FILE = "catalog.sqlite"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    deidentify: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    patients: Mapped[list[Patient]] = relationship(back_populates="project")


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("project_id", "patient_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    patient_key: Mapped[str] = mapped_column(String(128))
    patient_name: Mapped[str] = mapped_column(String(256), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    birth_date: Mapped[str] = mapped_column(String(16), default="")
    project: Mapped[Project] = relationship(back_populates="patients")
    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (UniqueConstraint("patient_id", "study_uid"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_date: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="")
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
    ingested_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    study: Mapped[Study] = relationship(back_populates="volumes")


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


_ADDED_COLUMNS = {"volumes": {"timepoints": "INTEGER NOT NULL DEFAULT 1"}}
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
    def ensure_project(self, name: str, *, deidentify: bool | None = None) -> Project:
        """Get or create a project; a project's de-identification setting never silently flips."""
        with self.session() as s:
            project = s.scalar(select(Project).where(Project.name == name))
            if project is None:
                project = Project(name=name, deidentify=bool(deidentify))
                s.add(project)
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
        """
        with self.session() as s:
            p = s.scalar(
                select(Patient).where(
                    Patient.project_id == project.id, Patient.patient_key == patient["patient_key"]
                )
            )
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
        """Store an ingest report and its rejected files together; return the report id."""
        with self.session() as s:
            r = IngestReport(project_id=project.id, **report)
            s.add(r)
            s.flush()
            for item in rejected:
                s.add(RejectedFile(report_id=r.id, **item))
            return r.id

    # -- queries ----------------------------------------------------------------------------------
    def _frame(self, stmt: Any) -> pd.DataFrame:
        import pandas as pd  # imported on first query: ingest alone never needs it

        with self.engine.connect() as conn:
            return pd.read_sql(stmt, conn)

    def projects(self) -> pd.DataFrame:
        """Every project with its de-identification setting."""
        return self._frame(select(Project.name, Project.deidentify, Project.created_at))

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
    ) -> pd.DataFrame:
        """Studies, with their patient, project, modalities and number of volumes.

        ``projects`` keeps only those projects (the data service passes the caller's).
        """
        stmt = (
            select(
                Project.name.label("project"),
                Patient.patient_key.label("patient_id"),
                Study.study_uid,
                Study.study_date,
                Study.description,
                func.count(Volume.id).label("volumes"),
            )
            .join(Patient, Study.patient_id == Patient.id)
            .join(Project, Patient.project_id == Project.id)
            .join(Volume, Volume.study_id == Study.id)
            .group_by(Project.name, Patient.patient_key, Study.id)
            .order_by(Study.study_date, Study.study_uid)
        )
        if modality:
            stmt = stmt.where(
                Study.id.in_(select(Volume.study_id).where(Volume.modality == modality))
            )
        if project:
            stmt = stmt.where(Project.name == project)
        if patient:
            stmt = stmt.where(Patient.patient_key == patient)
        if text:
            stmt = stmt.where(Study.description.ilike(f"%{text}%"))
        if projects is not None:
            stmt = stmt.where(Project.name.in_(list(projects)))
        if limit is not None:
            stmt = stmt.limit(limit).offset(offset)
        return self._frame(stmt)

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
    ) -> pd.DataFrame:
        """Volumes (series and their splits), filtered in SQL, paged with ``limit``/``offset``.

        ``projects`` keeps only those projects (the data service passes the caller's).
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
            .order_by(Study.study_uid, Volume.series_number, Volume.split)
        )
        if study_uid:
            stmt = stmt.where(Study.study_uid == study_uid)
        if modality:
            stmt = stmt.where(Volume.modality == modality)
        if project:
            stmt = stmt.where(Project.name == project)
        if text:
            pattern = f"%{text}%"
            stmt = stmt.where(
                or_(Volume.description.ilike(pattern), Study.description.ilike(pattern))
            )
        if flag:
            stmt = stmt.where(Volume.reasons.ilike(f"%[{flag}]%"))
        if uid:
            stmt = stmt.where(or_(Volume.volume_uid == uid, Volume.series_uid == uid))
        if projects is not None:
            stmt = stmt.where(Project.name.in_(list(projects)))
        if limit is not None:
            stmt = stmt.limit(limit).offset(offset)
        return self._frame(stmt)

    def search(self, text: str, **filters: Any) -> pd.DataFrame:
        """Free-text search on series and study descriptions."""
        return self.series(text=text, **filters)

    def store_paths(self) -> set[str]:
        """Every store path the catalog lists (for consistency checks)."""
        with self.session() as s:
            return set(s.scalars(select(Volume.store_path)))

    def reports(self) -> pd.DataFrame:
        """Ingest reports, newest first."""
        stmt = select(IngestReport).order_by(IngestReport.id.desc())
        return self._frame(stmt)

    def rejected(self, report_id: int | None = None) -> pd.DataFrame:
        """Files (and volumes) that could not be ingested, with the reason and the tag."""
        stmt = select(
            RejectedFile.report_id,
            RejectedFile.source,
            RejectedFile.reason,
            RejectedFile.tag,
            RejectedFile.series_uid,
        ).order_by(RejectedFile.id)
        if report_id is not None:
            stmt = stmt.where(RejectedFile.report_id == report_id)
        return self._frame(stmt)

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
