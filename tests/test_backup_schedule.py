"""The stack's scheduled backup: runs on its interval, applies retention, reports every outcome
(success or failure) to admins through the audit trail, and stops cleanly mid-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.conftest import REPO
from tests.test_backup import new_repository
from voxelhub import audit
from voxelhub.backup import Repository

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="needs restic (Debian)")


def start_schedule(repo: Repository, store: Path, hub: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'extensions'}:{REPO / 'workspace'}"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voxelhub_hub.backup_schedule",
            f"--repository={repo.url}",
            f"--password-file={repo.password_file}",
            f"--store={store}",
            f"--hub-state={hub}",
            f"--audit-log={hub / 'audit.log'}",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def runs(hub: Path) -> list[dict[str, object]]:
    try:
        return list(json.loads((hub / "backup-status.json").read_text())["runs"])
    except (FileNotFoundError, ValueError):
        return []


def wait_for(what: str, ok: object, proc: subprocess.Popen[str], seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ok():  # type: ignore[operator]
            return
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return out


def test_backups_run_on_schedule_keep_the_policy_and_report_to_admins(tmp_path: Path) -> None:
    repo = new_repository(tmp_path / "backups")
    store, hub = tmp_path / "store", tmp_path / "hub"
    store.mkdir()
    hub.mkdir()
    (store / "volume.bin").write_bytes(np.random.default_rng(0).bytes(1 << 16))
    proc = start_schedule(repo, store, hub, "--interval=1", "--keep-last=2")
    try:
        wait_for("three runs", lambda: len(runs(hub)) >= 3, proc)
        password = repo.password_file.read_text()
        repo.password_file.write_text("not the password\n")  # the next runs fail
        wait_for("a failed run", lambda: not runs(hub)[-1]["ok"], proc)
        repo.password_file.write_text(password)
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out

    history = runs(hub)
    good = [r for r in history if r["ok"]]
    assert len(good) >= 3 and all(r["snapshot"] for r in good)
    failed = history[-1]
    assert "restic" in str(failed["error"]) and failed["snapshot"] == ""
    assert len(repo.snapshots()) == 2  # keep-last 2; one a day is the newest of those
    repo.check()
    assert (hub / "backup-status.json").stat().st_mode & 0o777 == 0o600

    records = audit.query(hub / "audit.log", action="backup.run")
    assert len(records) == len(history)
    assert [r.detail["ok"] for r in records] == [r["ok"] for r in history]
    assert records[-1].reason == failed["error"]
    assert audit.verify(hub / "audit.log")


def test_a_restart_waits_for_the_interval_and_a_stop_mid_run_leaves_no_restic(
    tmp_path: Path,
) -> None:
    repo = new_repository(tmp_path / "backups")
    store, hub = tmp_path / "store", tmp_path / "hub"
    store.mkdir()
    hub.mkdir()
    rng = np.random.default_rng(1)
    for n in range(4):  # incompressible data restic needs a while to pack
        (store / f"blob{n}.bin").write_bytes(rng.bytes(24 << 20))
    proc = start_schedule(repo, store, hub, "--interval=3600")
    restic = None
    deadline = time.monotonic() + 60
    while restic is None and time.monotonic() < deadline:
        kids = psutil.Process(proc.pid).children()
        restic = next((k for k in kids if k.name() == "restic"), None)
        time.sleep(0.05)
    assert restic is not None, "the first backup did not start at once"
    time.sleep(0.5)
    stop(proc)  # while restic runs
    assert proc.returncode == 0
    _, alive = psutil.wait_procs([restic], timeout=30)
    assert not alive, "restic outlived the service"
    assert runs(hub) == [] and repo.snapshots() == []

    proc = start_schedule(repo, store, hub, "--interval=3600")
    try:
        wait_for("the first backup", lambda: len(runs(hub)) == 1, proc, seconds=300)
    finally:
        stop(proc)
    assert runs(hub)[0]["ok"], runs(hub)
    repo.check()

    proc = start_schedule(repo, store, hub, "--interval=3600")  # restarted: not due for an hour
    time.sleep(3)
    stop(proc)
    assert len(runs(hub)) == 1 and len(repo.snapshots()) == 1
