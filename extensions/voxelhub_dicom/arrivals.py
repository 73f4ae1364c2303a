"""Arrivals by DICOM networking and their state, for the project's curators.

One SQLite file, the data service account's (mode 0600 in a 0700 folder), written by the edge's
worker and read by the data service (``GET api/arrivals?project=P``, curators of ``P`` and hub
admins).  States: ``receiving`` (instances are coming in; the study is not stable yet),
``ingesting``, ``ingested`` (every instance is in the store), ``partial`` (some instances were
rejected, each with its reason; the rest is in the store), ``failed`` (nothing could be stored)
and ``refused`` (the caller may not send to that project, or the AE title is unknown: such
instances are never stored; an unknown title's refusals have no project and are listed to hub
admins only).  In a de-identified project nothing
identifying is kept: the study is named by Orthanc's hashed ID and by the de-identified volume
UIDs the ingest wrote.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from collections.abc import Sequence
from typing import Any

STATES = ("receiving", "ingesting", "ingested", "partial", "failed", "refused")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS arrivals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    orthanc_study TEXT NOT NULL,
    project TEXT NOT NULL,
    called_aet TEXT NOT NULL,
    calling_aet TEXT NOT NULL,
    calling_host TEXT NOT NULL,
    state TEXT NOT NULL,
    instances INTEGER NOT NULL DEFAULT 0,
    rejected TEXT NOT NULL DEFAULT '[]',
    volumes TEXT NOT NULL DEFAULT '[]',
    message TEXT NOT NULL DEFAULT '',
    received_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS arrivals_project ON arrivals (project);
CREATE TABLE IF NOT EXISTS edge_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = (
    "id",
    "orthanc_study",
    "project",
    "called_aet",
    "calling_aet",
    "calling_host",
    "state",
    "instances",
    "rejected",
    "volumes",
    "message",
    "received_at",
    "updated_at",
)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Arrivals:
    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = os.fspath(path)
        if not create and not os.path.exists(self.path):
            raise FileNotFoundError(self.path)
        if create:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
        self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        if create:
            self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- the worker's side --
    def get_state(self, key: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM edge_state WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else default

    def set_state(self, key: str, value: str) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO edge_state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def open_arrival(
        self,
        orthanc_study: str,
        project: str,
        called_aet: str,
        calling_aet: str,
        calling_host: str,
        *,
        state: str = "receiving",
    ) -> int:
        """The open arrival of this study into this project, created if there is none."""
        row = self.db.execute(
            "SELECT id FROM arrivals WHERE orthanc_study = ? AND project = ? "
            "AND state IN ('receiving', 'ingesting')",
            (orthanc_study, project),
        ).fetchone()
        if row:
            return int(row[0])
        now = _now()
        with self.db:
            cur = self.db.execute(
                "INSERT INTO arrivals (orthanc_study, project, called_aet, calling_aet, "
                "calling_host, state, received_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (orthanc_study, project, called_aet, calling_aet, calling_host, state, now, now),
            )
        return int(cur.lastrowid or 0)

    def refused(
        self,
        project: str,
        called_aet: str,
        calling_aet: str,
        calling_host: str,
        count: int,
        reason: str,
    ) -> int:
        """Instances Orthanc's filter refused (never stored): one row per caller and title."""
        now = _now()
        with self.db:
            cur = self.db.execute(
                "INSERT INTO arrivals (orthanc_study, project, called_aet, calling_aet, "
                "calling_host, state, instances, message, received_at, updated_at) "
                "VALUES ('', ?, ?, ?, ?, 'refused', ?, ?, ?, ?)",
                (project, called_aet, calling_aet, calling_host, count, reason, now, now),
            )
        return int(cur.lastrowid or 0)

    def update(
        self,
        arrival: int,
        *,
        state: str,
        instances: int | None = None,
        rejected: list[dict[str, str]] | None = None,
        volumes: list[str] | None = None,
        message: str | None = None,
    ) -> None:
        if state not in STATES:
            raise ValueError(f"unknown arrival state {state!r}")
        sets: list[str] = ["state = ?", "updated_at = ?"]
        values: list[Any] = [state, _now()]
        for column, value in (
            ("instances", instances),
            ("rejected", None if rejected is None else json.dumps(rejected)),
            ("volumes", None if volumes is None else json.dumps(volumes)),
            ("message", message),
        ):
            if value is not None:
                sets.append(f"{column} = ?")
                values.append(value)
        with self.db:
            self.db.execute(
                f"UPDATE arrivals SET {', '.join(sets)} WHERE id = ?", (*values, arrival)
            )

    # -- the curators' side --
    def list(self, projects: Sequence[str] | None, *, limit: int = 200) -> list[dict[str, Any]]:
        """Newest first; ``projects`` None means every project (an admin)."""
        query = f"SELECT {', '.join(_COLUMNS)} FROM arrivals"
        args: list[Any] = []
        if projects is not None:
            if not projects:
                return []
            query += f" WHERE project IN ({', '.join('?' * len(projects))})"
            args += list(projects)
        query += " ORDER BY id DESC LIMIT ?"
        args.append(int(limit))
        rows = []
        for values in self.db.execute(query, args):
            row = dict(zip(_COLUMNS, values, strict=True))
            row["rejected"] = json.loads(row["rejected"])
            row["volumes"] = json.loads(row["volumes"])
            rows.append(row)
        return rows
