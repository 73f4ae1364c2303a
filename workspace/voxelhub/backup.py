"""Backups with restic: encrypted, deduplicated, incremental snapshots a site can come back from.

What one snapshot holds (:class:`Sources`):

- the store (volumes, labels, feature tables, wrapped data keys in ``.keys/``), without its live
  SQLite catalog files, which are copied *consistently* instead (SQLite's online backup API: a
  snapshot of a catalog in use, never a half-written page);
- the hub's state, if given: ``jupyterhub.sqlite`` (consistent copy), the audit log and its
  checkpoints, the configuration files; not its runtime leftovers (pid files, cluster folders);
- a manifest (``voxelhub-backup.json``) saying where each part came from.

restic encrypts the repository with its own password (``--password-file``) and never rewrites a
finished snapshot: a backup killed at any moment leaves the earlier ones intact, and the next run
completes (``restic check`` passes).

Key material is kept apart.  The wrapped data keys (``<store>/.keys/``) travel with the store:
without them its chunks are lost, and they are useless without a master key.  Master key files
are *never* in a data snapshot (a key file found under a backed-up folder is excluded, and the
run says so); :meth:`Repository.run_keys` backs them up to another repository with another
password, and :meth:`Repository.restore_keys` brings them back.

PostgreSQL catalogs are dumped with ``pg_dump`` (custom format) into the snapshot and loaded with
``pg_restore`` on restore (``catalog_url``).  :meth:`Repository.forget` applies a retention policy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from voxelhub.errors import VoxelHubError

log = logging.getLogger(__name__)

MANIFEST = "voxelhub-backup.json"
KEYS_MANIFEST = "voxelhub-keys.json"
PG_DUMP = "catalog.pgdump"
#: a staging folder this old is a killed run's leftover (a run takes minutes, not hours)
STALE_STAGING_SECONDS = 6 * 3600
#: files of a hub state folder that are not backed up (recreated at start, or per-run scratch)
HUB_SKIP = ("jupyterhub.pid", "jupyterhub-proxy.pid", "dask-clusters", "runtime", "sessions")
#: append-only files of a hub state folder, copied in this order while the hub runs: checkpoints
#: first, so every head they name is in the (later, longer) copy of the log
HUB_APPEND_ONLY = ("audit-checkpoints.jsonl", "audit/audit.log")


class BackupError(VoxelHubError):
    """restic failed, or a restore does not match what was backed up."""


@dataclass(frozen=True)
class Sources:
    """What a site needs to come back: a store (with its catalog) and, on the hub, its state."""

    store: Path
    hub_state: Path | None = None
    catalog_url: str | None = None
    """a PostgreSQL catalog (``postgresql://…``), dumped with ``pg_dump``; SQLite catalogs in the
    store are copied without being named here"""
    key_files: tuple[Path, ...] = ()
    """master key files, never put in a data snapshot even if they live under a backed-up folder"""


@dataclass(frozen=True)
class Retention:
    """Which snapshots :meth:`Repository.forget` keeps (restic's ``--keep-*``; 0 = no rule)."""

    last: int = 7
    daily: int = 14
    weekly: int = 8
    monthly: int = 12

    def restic_args(self) -> list[str]:
        rules = (("last", self.last), ("daily", self.daily), ("weekly", self.weekly))
        args = [f"--keep-{name}={n}" for name, n in (*rules, ("monthly", self.monthly)) if n > 0]
        if not args:
            raise BackupError("a retention policy must keep something")
        return args


@dataclass(frozen=True)
class Snapshot:
    """One restic snapshot: its id, time, and (for the run that made it) what it added."""

    id: str
    time: str
    files_new: int = 0
    files_changed: int = 0
    bytes_added: int = 0
    tags: tuple[str, ...] = ()


class Repository:
    """A restic repository (local folder or ``s3:…``) opened with a password file."""

    def __init__(self, url: str, password_file: str | os.PathLike[str]) -> None:
        self.url = url
        self.password_file = Path(password_file)

    # -- restic ----------------------------------------------------------------------------------
    def _restic(self, *args: str, json_out: bool = False, cwd: str | None = None) -> str:
        if shutil.which("restic") is None:
            raise BackupError("restic is not installed (Debian: apt-get install restic)")
        cmd = ["restic", "--repo", self.url, "--password-file", str(self.password_file)]
        cmd += ["--json"] if json_out else []
        cmd += ["--no-cache", *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
        if done.returncode != 0:
            raise BackupError(
                f"restic {args[0]} failed ({done.returncode}) for {self.url}: "
                f"{done.stderr.strip()[-2000:]}"
            )
        return done.stdout

    def init(self) -> None:
        """Create the repository (encrypted with the password in ``password_file``)."""
        self._restic("init")

    def snapshots(self) -> list[Snapshot]:
        return [
            Snapshot(id=s["short_id"], time=s["time"], tags=tuple(s.get("tags") or ()))
            for s in json.loads(self._restic("snapshots", json_out=True) or "[]")
        ]

    def unlock(self) -> None:
        """Remove stale locks, e.g. of a backup killed with the machine (live ones stay)."""
        self._restic("unlock")

    def check(self, read_data: bool = False) -> None:
        """``restic check`` (``--read-data``: every pack re-read and verified)."""
        self.unlock()
        self._restic("check", *(["--read-data"] if read_data else []))

    def run(self, sources: Sources) -> Snapshot:
        """Back up ``sources``; return the new snapshot and what it added."""
        self.unlock()
        self._refuse_mixing("voxelhub-keys", "key backups; data goes to another repository")
        with _staged(sources) as (staging, paths):
            out = self._restic("backup", "--tag", "voxelhub", *paths, json_out=True, cwd=staging)
        return _snapshot_from(out)

    def _refuse_mixing(self, tag: str, what: str) -> None:
        if any(tag in snap.tags for snap in self.snapshots()):
            raise BackupError(f"{self.url} holds {what}")

    def forget(self, keep: Retention, *, tag: str = "voxelhub") -> int:
        """Drop the snapshots ``keep`` does not keep and prune their data; return how many went."""
        self.unlock()
        # grouped by tag, not path: each run stages its copies in a folder of its own
        args = ("forget", "--tag", tag, "--group-by", "host,tags", "--prune", *keep.restic_args())
        out = self._restic(*args, json_out=True)
        groups = json.loads(next((ln for ln in out.splitlines() if ln.startswith("[")), "[]"))
        return sum(len(g.get("remove") or []) for g in groups)

    def run_keys(self, key_files: list[Path]) -> Snapshot:
        """Back up master key files (to a repository of their own: never the data repository)."""
        missing = [str(f) for f in key_files if not Path(f).is_file()]
        if missing or not key_files:
            raise BackupError(f"no such key file: {', '.join(missing) or '(none given)'}")
        self.unlock()
        self._refuse_mixing("voxelhub", "data snapshots; keys go to a repository of their own")
        with tempfile.TemporaryDirectory(prefix=".voxelhub-keys-") as staging:
            os.chmod(staging, 0o700)
            files = [str(Path(f).resolve()) for f in key_files]
            manifest = {"key_files": files, "created": _now()}
            Path(staging, KEYS_MANIFEST).write_text(json.dumps(manifest, indent=1))
            out = self._restic(
                "backup", "--tag", "voxelhub-keys", staging, *files, json_out=True, cwd=staging
            )
        return _snapshot_from(out)

    def restore_keys(self, to: str | os.PathLike[str], snapshot: str = "latest") -> list[Path]:
        """Restore the key files of ``snapshot`` into the empty folder ``to`` (0700; files keep
        their 0600 mode); return their new paths.  Where they go next is the operator's call."""
        target = _empty_folder(to)
        os.chmod(target, 0o700)
        scratch = Path(tempfile.mkdtemp(prefix=".restore-", dir=target))
        try:
            self._restic("restore", snapshot, "--target", str(scratch))
            manifests = list(scratch.rglob(KEYS_MANIFEST))
            if len(manifests) != 1:
                raise BackupError(f"snapshot {snapshot} is not a key backup (no {KEYS_MANIFEST})")
            restored = []
            for name in json.loads(manifests[0].read_text())["key_files"]:
                dest = target / Path(name).name
                if dest.exists():
                    raise BackupError(f"two key files are named {dest.name}; restore by hand")
                os.rename(scratch / name.lstrip("/"), dest)
                restored.append(dest)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return restored

    def restore(
        self,
        to: str | os.PathLike[str],
        snapshot: str = "latest",
        *,
        catalog_url: str | None = None,
    ) -> Sources:
        """Restore ``snapshot`` into the empty folder ``to``: ``to/store`` and ``to/hub``.

        The catalog copy goes back to its place in the store; files keep their owners and modes
        (when run as root).  A PostgreSQL catalog's dump is loaded into ``catalog_url`` (an empty
        database) or, without one, left as ``to/catalog.pgdump`` for ``pg_restore``.  Returns
        where the parts are now.
        """
        target = _empty_folder(to)
        scratch = Path(tempfile.mkdtemp(prefix=".restore-", dir=target))
        try:
            self._restic("restore", snapshot, "--target", str(scratch))
            manifests = list(scratch.rglob(MANIFEST))
            if len(manifests) != 1:
                raise BackupError(f"snapshot {snapshot} has no single {MANIFEST}")
            staged = manifests[0].parent
            manifest = json.loads(manifests[0].read_text())
            store = target / "store"
            os.rename(scratch / str(manifest["store"]).lstrip("/"), store)
            for name in manifest["catalog_files"]:
                os.rename(staged / "catalog" / name, store / name)
            restored = Sources(store=store)
            if manifest.get("hub"):
                hub = target / "hub"
                os.rename(scratch / str(manifest["hub"]).lstrip("/"), hub)
                for name in manifest["hub_databases"]:
                    os.rename(staged / "hub-db" / name, hub / name)
                for name in manifest.get("hub_append_only", []):
                    os.rename(staged / "hub-append" / name, hub / name)
                restored = Sources(store=store, hub_state=hub)
            if manifest.get("pg_dump"):
                os.rename(staged / PG_DUMP, target / PG_DUMP)
                if catalog_url is not None:
                    _pg(
                        "pg_restore",
                        catalog_url,
                        "--no-owner",
                        "--exit-on-error",
                        str(target / PG_DUMP),
                    )
                    os.unlink(target / PG_DUMP)
                restored = Sources(restored.store, restored.hub_state, catalog_url=catalog_url)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return restored


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _snapshot_from(out: str) -> Snapshot:
    """The new snapshot from ``restic backup --json``'s summary line."""
    summary = next((json.loads(line) for line in out.splitlines() if '"summary"' in line), None)
    if summary is None:
        raise BackupError(f"restic backup printed no summary: {out[-500:]}")
    return Snapshot(
        id=summary["snapshot_id"][:8],
        time=_now(),
        files_new=int(summary.get("files_new", 0)),
        files_changed=int(summary.get("files_changed", 0)),
        bytes_added=int(summary.get("data_added", 0)),
    )


def _empty_folder(to: str | os.PathLike[str]) -> Path:
    target = Path(to)
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target} is not empty: restore into a new folder")
    target.mkdir(parents=True, exist_ok=True)
    return target


def _pg(tool: str, url: str, *args: str) -> None:
    """Run ``pg_dump``/``pg_restore`` on a catalog URL; its password goes by environment, never
    on the command line (where ``ps`` shows it)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.drivername.startswith("postgresql"):
        raise BackupError(f"{parsed.render_as_string(hide_password=True)} is not a PostgreSQL URL")
    if shutil.which(tool) is None:
        raise BackupError(f"{tool} is not installed (Debian: apt-get install postgresql-client)")
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    libpq = parsed.set(drivername="postgresql", password=None)
    dsn = libpq.render_as_string(hide_password=False)
    done = subprocess.run([tool, "--dbname", dsn, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise BackupError(f"{tool} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


@contextmanager
def _staged(sources: Sources) -> Iterator[tuple[str, list[str]]]:
    """A private folder with consistent copies of the databases and the manifest; restic backs it
    up together with the live store and hub folders (by absolute path, live databases excluded)."""
    store = sources.store.resolve()
    for old in store.parent.glob(".voxelhub-backup-*"):  # a run killed before its clean-up
        if old.is_dir() and time.time() - old.stat().st_mtime > STALE_STAGING_SECONDS:
            shutil.rmtree(old, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".voxelhub-backup-", dir=store.parent))
    try:
        os.chmod(staging, 0o700)
        (staging / "catalog").mkdir()
        catalogs = sorted(p.name for p in store.glob("*.sqlite"))
        for name in catalogs:
            _copy_sqlite(store / name, staging / "catalog" / name)
        manifest: dict[str, object] = {
            "store": str(store),
            "catalog_files": catalogs,
            "hub": None,
            "hub_databases": [],
            "created": _now(),
            "pg_dump": bool(sources.catalog_url),
        }
        if sources.catalog_url:
            _pg(
                "pg_dump",
                sources.catalog_url,
                "--format=custom",
                "--no-owner",
                "--file",
                str(staging / PG_DUMP),
            )
        paths = [str(staging), str(store)]
        excludes = [str(store / n) + suffix for n in catalogs for suffix in ("", "-wal", "-shm")]
        excludes.append(str(store / ".tmp"))
        if sources.hub_state is not None:
            hub = sources.hub_state.resolve()
            (staging / "hub-db").mkdir()
            databases = sorted(p.name for p in hub.glob("*.sqlite"))
            for name in databases:
                _copy_sqlite(hub / name, staging / "hub-db" / name)
            paths.append(str(hub))
            excludes += [str(hub / n) for n in HUB_SKIP]
            appended = [n for n in HUB_APPEND_ONLY if (hub / n).is_file()]
            for name in appended:
                _copy_append_only(hub / name, staging / "hub-append" / name)
                excludes.append(str(hub / name))
            manifest["hub_append_only"] = appended
            excludes += [str(hub / n) + sfx for n in databases for sfx in ("", "-wal", "-shm")]
            manifest.update(hub=str(hub), hub_databases=databases)
        for key_file in sources.key_files:  # key material never goes into a data snapshot
            key = Path(key_file).resolve()
            if any(key.is_relative_to(Path(folder)) for folder in paths):
                log.warning("master key file %s is under a backed-up folder: left out", key)
                excludes.append(str(key))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        (staging / ".excludes").write_text("\n".join(excludes) + "\n")
        yield str(staging), [*paths, "--exclude-file", str(staging / ".excludes")]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_append_only(source: Path, target: Path) -> None:
    """Copy a log that is being appended to up to its last whole line, keeping owner and mode."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as f:
        data = f.read()
    data = data[: data.rfind(b"\n") + 1]
    st = source.stat()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o777)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    if os.geteuid() == 0:
        os.chown(target, st.st_uid, st.st_gid)


def _copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database that may be in use (online backup API)."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    st = source.stat()  # the copy goes back in its place: same owner and mode
    os.chmod(target, st.st_mode & 0o777)
    if os.geteuid() == 0:
        os.chown(target, st.st_uid, st.st_gid)
