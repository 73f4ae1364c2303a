"""Scheduled backups run by the stack: a restic snapshot every ``interval``, then the retention
policy, each outcome reported to admins.

The hub starts this as a managed service (as root: it reads the data service's store and the hub's
own state, both private).  Admins see every outcome in the audit trail (action ``backup.run``,
``GET api/audit?action=backup.run`` on the data service, or ``voxelhub audit query``) and the last
runs in ``status_file``.  A run that fails is recorded with its error and retried after
``retry_after``; an interrupted run leaves earlier snapshots intact (restic never rewrites a
finished snapshot) and the next one completes (:mod:`voxelhub.backup`).
"""

from __future__ import annotations

import calendar
import json
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from traitlets import Float, Int, List, Unicode, default
from traitlets.config import Application

from voxelhub.backup import Repository, Retention, Sources
from voxelhub.errors import VoxelHubError

log = logging.getLogger("voxelhub.backup_schedule")

ACTION = "backup.run"
#: how many past outcomes ``status_file`` keeps
HISTORY = 30


@dataclass(frozen=True)
class Outcome:
    """One scheduled run, as admins see it."""

    started: str
    seconds: float
    ok: bool
    snapshot: str = ""
    bytes_added: int = 0
    removed: int = 0
    error: str = ""


class BackupSchedule(Application):  # type: ignore[misc]
    """Back up the store and the hub's state every ``interval`` seconds."""

    name = "voxelhub-backup"
    description = __doc__

    repository = Unicode(
        help="restic repository (a folder or s3:…) the snapshots go to", config=True
    )
    password_file = Unicode(
        help="file holding the repository's password (root-only, outside the backed-up folders)",
        config=True,
    )
    store = Unicode(help="the store folder to back up (with its catalog)", config=True)
    hub_state = Unicode(
        "", help="the hub's state folder (database, audit log); empty: none", config=True
    )
    catalog_url = Unicode(
        "", help="a PostgreSQL catalog to dump with pg_dump; empty: the store's SQLite", config=True
    )
    key_files = List(
        Unicode(),
        help="master key files, never put in a data snapshot (back them up with `backup keys`)",
        config=True,
    )
    interval = Float(86400.0, help="seconds between the starts of two backups", config=True)
    retry_after = Float(900.0, help="seconds before a failed backup is tried again", config=True)
    keep_last = Int(7, help="snapshots kept regardless of age (0: no rule)", config=True)
    keep_daily = Int(
        14, help="one snapshot a day kept for this many days (0: no rule)", config=True
    )
    keep_weekly = Int(8, help="one a week kept for this many weeks (0: no rule)", config=True)
    keep_monthly = Int(12, help="one a month kept for this many months (0: no rule)", config=True)
    status_file = Unicode(
        help="JSON file with the last outcomes (default: <hub_state>/backup-status.json)",
        config=True,
    )
    audit_log = Unicode(
        "", help="the audit trail each outcome is recorded in; empty: none", config=True
    )

    @default("status_file")
    def _status_file_default(self) -> str:
        return os.path.join(self.hub_state or ".", "backup-status.json")

    aliases = {  # noqa: RUF012 - traitlets' convention
        "f": "BackupSchedule.config_file",
        "repository": "BackupSchedule.repository",
        "password-file": "BackupSchedule.password_file",
        "store": "BackupSchedule.store",
        "hub-state": "BackupSchedule.hub_state",
        "catalog-url": "BackupSchedule.catalog_url",
        "interval": "BackupSchedule.interval",
        "keep-last": "BackupSchedule.keep_last",
        "status-file": "BackupSchedule.status_file",
        "audit-log": "BackupSchedule.audit_log",
    }
    config_file = Unicode("", help="a Python config file to load", config=True)

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
        missing = [n for n in ("repository", "password_file", "store") if not getattr(self, n)]
        if missing:
            raise VoxelHubError(f"voxelhub-backup: set {', '.join(missing)}")
        self._stop = threading.Event()

    # -- one run ---------------------------------------------------------------------------------
    def run_once(self) -> Outcome:
        """Back up, apply the retention policy, and report; never raises for a failed backup."""
        repo = Repository(self.repository, self.password_file)
        began, clock = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.monotonic()
        try:
            sources = Sources(
                store=Path(self.store),
                hub_state=Path(self.hub_state) if self.hub_state else None,
                catalog_url=self.catalog_url or None,
                key_files=tuple(Path(k) for k in self.key_files),
            )
            snap = repo.run(sources)
            keep = Retention(self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly)
            removed = repo.forget(keep)
            outcome = Outcome(
                began,
                round(time.monotonic() - clock, 1),
                True,
                snap.id,
                snap.bytes_added,
                removed,
            )
        except (VoxelHubError, OSError) as exc:
            outcome = Outcome(began, round(time.monotonic() - clock, 1), False, error=str(exc))
        self._report(outcome)
        return outcome

    def _report(self, outcome: Outcome) -> None:
        if outcome.ok:
            log.info(
                "backup %s: %d bytes added, %d old snapshots removed",
                outcome.snapshot,
                outcome.bytes_added,
                outcome.removed,
            )
        else:
            log.error("backup failed: %s", outcome.error)
        status = Path(self.status_file)
        history = [*_history(status)[-(HISTORY - 1) :], asdict(outcome)]
        tmp = status.with_name(f".{status.name}.tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump({"repository": self.repository, "runs": history}, f, indent=1)
        os.replace(tmp, status)
        if self.audit_log:
            from voxelhub.audit import AuditLog

            with AuditLog(self.audit_log) as trail:
                trail.record(
                    user=self.name,
                    client="service",
                    action=ACTION,
                    decision="allow",
                    reason=outcome.error or "completed",
                    nbytes=outcome.bytes_added,
                    detail=asdict(outcome),
                )

    # -- the schedule ----------------------------------------------------------------------------
    def next_due(self) -> float:
        """Seconds until the next run: ``interval`` after the last success (``retry_after`` after
        a failure), counted from ``status_file`` so a restarted hub does not back up at once."""
        runs = _history(Path(self.status_file))
        if not runs:
            return 0.0
        last = runs[-1]
        started = calendar.timegm(time.strptime(last["started"], "%Y-%m-%dT%H:%M:%SZ"))
        wait = self.interval if last.get("ok") else self.retry_after
        return max(0.0, started + wait - time.time())

    def start(self) -> None:
        running = threading.Event()

        def stop(*_: object) -> None:
            self._stop.set()
            if running.is_set():  # subprocess.run kills restic as this unwinds; the repository
                raise SystemExit(0)  # stays sound and the next run completes

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("backing up %s to %s every %.0f s", self.store, self.repository, self.interval)
        while not self._stop.wait(self.next_due()):
            running.set()
            try:
                self.run_once()
            finally:
                running.clear()


def _history(status: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(status.read_text())["runs"])
    except (FileNotFoundError, ValueError, KeyError):
        return []


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = BackupSchedule()
    try:
        app.initialize(argv)
    except VoxelHubError as exc:
        raise SystemExit(str(exc)) from None  # a setting is missing: one line, no traceback
    app.start()


if __name__ == "__main__":
    main()
