"""Feature results in a database, so a cohort extraction can be resumed and re-queried.

The tables belong to the features module and are created here through SQLAlchemy Core, in
the catalog's database by default (SQLite inside a local store, PostgreSQL on the hub) or in
any database given by URL. A result is keyed by (series, ROI, settings hash): rerunning the
same settings on the same cohort skips what is there, and a different setting never mixes
with an old one.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

import pandas as pd
from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    insert,
    select,
)
from sqlalchemy.engine import Engine

from voxelhub.features.settings import Settings

__all__ = ["ResultStore", "Results", "open_results"]

_metadata = MetaData()

_settings_table = Table(
    "radiomics_settings",
    _metadata,
    Column("settings_hash", String(64), primary_key=True),
    Column("settings_json", Text, nullable=False),
)

_features_table = Table(
    "radiomics_features",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("series", String(128), nullable=False, index=True),
    Column("roi", String(128), nullable=False),
    Column("settings_hash", String(64), nullable=False, index=True),
    Column("feature", String(128)),
    Column("family", String(64)),
    Column("value", Float),
    Column("ibsi_tag", String(128)),
    Column("error", Text),
    Column("computed_at", DateTime(timezone=True), nullable=False),
)

COLUMNS = ["series", "roi", "feature", "family", "value", "ibsi_tag", "settings_hash", "error"]
"""Columns of a cohort result table (``extract_many``) and of the stored rows."""

SETTINGS_METADATA = b"voxelhub.settings"
"""Key of the settings JSON in the schema metadata of a result table sent as Parquet."""


class Results(Protocol):
    """Where cohort results are stored: a database (:class:`ResultStore`) or the data service
    (:class:`voxelhub.service_catalog.ServiceResults`)."""

    def done(self, settings: Settings) -> set[tuple[str, str]]: ...

    def save(self, table: pd.DataFrame, settings: Settings) -> None: ...

    def load(
        self, settings: Settings | None = None, series: list[str] | None = None
    ) -> pd.DataFrame: ...

    def settings(self, settings_hash: str) -> Settings: ...


def open_results(target: Any) -> Results:
    """The result store of ``target``: a Catalog, URL or Engine (its database), a
    :class:`~voxelhub.service_catalog.ServiceCatalog` (the data service stores them, for the
    analysts of each volume's project), or a :class:`Results` object itself."""
    if hasattr(target, "results") and callable(target.results):
        return target.results()
    if all(hasattr(target, m) for m in ("done", "save", "load", "settings")):
        return target
    return ResultStore(target)


class ResultStore:
    """Read and write cohort results in a database.

    Parameters
    ----------
    target
        A :class:`voxelhub.Catalog` (its database is used), an SQLAlchemy URL, or an
        :class:`sqlalchemy.engine.Engine`.
    """

    def __init__(self, target: Any) -> None:
        if isinstance(target, Engine):
            self.engine = target
        elif isinstance(target, str):
            from voxelhub.catalog import make_engine

            self.engine = make_engine(target)
        elif hasattr(target, "engine"):
            self.engine = target.engine
        else:
            raise TypeError(
                f"cannot store results in {target!r}: give a Catalog, a URL or an Engine "
                "(open_results also takes the data service's catalog)"
            )
        _metadata.create_all(self.engine)

    def done(self, settings: Settings) -> set[tuple[str, str]]:
        """(series, roi) pairs already computed without error for these settings."""
        stmt = (
            select(_features_table.c.series, _features_table.c.roi)
            .where(_features_table.c.settings_hash == settings.hash)
            .where(_features_table.c.error.is_(None))
            .distinct()
        )
        with self.engine.connect() as conn:
            return {(str(s), str(r)) for s, r in conn.execute(stmt)}

    def save(self, table: pd.DataFrame, settings: Settings) -> None:
        """Store one case's rows, replacing earlier rows of the same (series, roi, settings)."""
        if table.empty:
            return
        now = dt.datetime.now(dt.UTC)
        rows = [
            {
                **{k: (None if pd.isna(v) else v) for k, v in rec.items() if k in COLUMNS},
                "computed_at": now,
            }
            for rec in table.to_dict("records")
        ]
        keys = {(r["series"], r["roi"]) for r in rows}
        with self.engine.begin() as conn:
            known = conn.execute(
                select(_settings_table.c.settings_hash).where(
                    _settings_table.c.settings_hash == settings.hash
                )
            ).first()
            if known is None:
                conn.execute(
                    insert(_settings_table).values(
                        settings_hash=settings.hash, settings_json=settings.to_json()
                    )
                )
            for series, roi in keys:
                conn.execute(
                    delete(_features_table).where(
                        and_(
                            _features_table.c.series == series,
                            _features_table.c.roi == roi,
                            _features_table.c.settings_hash == settings.hash,
                        )
                    )
                )
            conn.execute(insert(_features_table), rows)

    def load(
        self, settings: Settings | str | None = None, series: list[str] | None = None
    ) -> pd.DataFrame:
        """Stored rows as a tidy table, optionally for one setting (or its hash) and some series."""
        stmt = select(*(_features_table.c[c] for c in COLUMNS))
        if settings is not None:
            wanted = settings if isinstance(settings, str) else settings.hash
            stmt = stmt.where(_features_table.c.settings_hash == wanted)
        if series is not None:
            stmt = stmt.where(_features_table.c.series.in_(series))
        with self.engine.connect() as conn:
            frame = pd.DataFrame(conn.execute(stmt).fetchall(), columns=COLUMNS)
        frame["value"] = frame["value"].astype(float)
        return frame

    def settings(self, settings_hash: str) -> Settings:
        """The settings a stored hash stands for."""
        stmt = select(_settings_table.c.settings_json).where(
            _settings_table.c.settings_hash == settings_hash
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            raise KeyError(f"no settings with hash {settings_hash} in {self.engine.url}")
        return Settings.from_json(str(row[0]))
