"""Disaster recovery of a whole stack: the hub's own scheduled backup, the machine lost (state,
store, accounts), a restore into a new folder, and the stack working again from it.

Users sign in with their old passwords, volumes read through the data service with the same
voxels, the audit trail (records from before the loss included) verifies against its
checkpoints, and the restored files have the right owners and modes, although the data service's
account came back with another uid.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.dicom_factory import write_series

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "extensions"))

from voxelhub_hub.client import HubBrowser  # noqa: E402
from voxelhub_hub.project_groups import remove_group  # noqa: E402
from voxelhub_hub.stack import HubStack  # noqa: E402
from voxelhub_hub.system_users import remove_account, remove_managed_group_if_unused  # noqa: E402

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="unix accounts need root"),
    pytest.mark.skipif(shutil.which("restic") is None, reason="needs restic (Debian)"),
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]

S = secrets.token_hex(3)
ADMIN, ALICE, PROJECT = f"vradm{S}", f"vra{S}", f"drill{S}"
SERVICE, FILLER = f"vrdata{S}", f"vrfill{S}"


def volume_sums(stack: HubStack, token: str) -> dict[str, float]:
    import voxelhub

    cat = voxelhub.open_catalog(stack.data_url, storage_options={"token": token})
    return {
        uid: float(np.asarray(cat.open_series(uid)).astype(np.float64).sum())
        for uid in cat.series(project=PROJECT).volume_uid
    }


def modes(folder: Path) -> dict[str, int]:
    """Modes of what a backup holds (not the scratch folder or SQLite's live -wal/-shm)."""
    return {
        str(p.relative_to(folder)): p.lstat().st_mode
        for p in sorted(folder.rglob("*"))
        if not p.name.endswith(("-wal", "-shm")) and ".tmp" not in p.relative_to(folder).parts
    }


def last_run(hub: Path) -> dict[str, object]:
    try:
        return dict(json.loads((hub / "backup-status.json").read_text())["runs"][-1])
    except (FileNotFoundError, ValueError, IndexError):
        return {}


def test_a_lost_machine_comes_back_from_the_hubs_own_backup() -> None:
    import voxelhub
    from voxelhub import audit
    from voxelhub.backup import Repository

    root = Path(tempfile.mkdtemp(prefix="vhrestore-"))
    os.chmod(root, 0o755)
    site, store, hub = root / "site", root / "site" / "store", root / "site" / "hub"
    password = root / "backup-password"
    password.write_text(secrets.token_urlsafe(24) + "\n")
    os.chmod(password, 0o600)
    repo = Repository(str(root / "backups"), password)
    repo.init()
    env = {"VOXELHUB_DATA_USER": SERVICE, "VOXELHUB_AUDIT_CHECKPOINT_SECONDS": "1"}
    stacks: list[HubStack] = []
    try:
        for n in range(2):
            write_series(
                root / "dicom" / str(n), slices=6, rows=24, columns=24, seed=n, patient_id=f"PR{n}"
            )
            assert not voxelhub.ingest(
                root / "dicom" / str(n), store, project=PROJECT, progress=False
            ).failed
        first = HubStack(
            hub,
            store=store,
            admins=[ADMIN],
            projects={PROJECT: [ALICE]},
            extra_env={
                **env,
                "VOXELHUB_BACKUP_REPO": repo.url,
                "VOXELHUB_BACKUP_PASSWORD_FILE": str(password),
                "VOXELHUB_BACKUP_INTERVAL": "4",
            },
        )
        stacks.append(first)
        first.start(timeout=180)
        admin_password, alice_password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
        admin = HubBrowser(first.url, first.verify)
        admin.signup(ADMIN, admin_password)
        admin.login(ADMIN, admin_password, next_url="/hub/home")
        alice = HubBrowser(first.url, first.verify)
        alice.signup(ALICE, alice_password)
        admin.approve(ALICE)
        alice.login(ALICE, alice_password, next_url="/hub/home")
        before = volume_sums(first, alice.new_token())
        assert len(before) == 2

        # the hub's scheduled backup, taken while it runs, after what happened above
        done = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
        deadline = time.monotonic() + 240
        while not (last_run(hub).get("ok") and str(last_run(hub)["started"]) > done):
            assert time.monotonic() < deadline, f"no backup after {done}: {last_run(hub)}"
            assert first.proc is not None and first.proc.poll() is None, first.tail()
            time.sleep(1)
        first.stop()
        stacks.remove(first)
        store_modes = modes(store)
        lived = audit.query(hub / "audit" / "audit.log")  # everything stack one recorded

        # the machine is lost: its folders and its accounts; the service account will come
        # back with another uid, because another account takes its number first
        old_uid = pwd.getpwnam(SERVICE).pw_uid
        shutil.rmtree(site)
        for name in (ALICE, ADMIN):
            remove_account(name)
        subprocess.run(["userdel", SERVICE], check=True, capture_output=True)
        subprocess.run(["groupdel", SERVICE], capture_output=True, check=False)
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--uid", str(old_uid), FILLER],
            check=True,
            capture_output=True,
        )

        back = repo.restore(root / "new")
        assert back.hub_state is not None
        log = back.hub_state / "audit" / "audit.log"
        restored = audit.query(log)  # what the backup caught: a prefix of what happened
        assert [r.hash for r in restored] == [r.hash for r in lived[: len(restored)]]
        assert any(r.user == ALICE for r in restored), "alice's catalog query is not in it"
        second = HubStack(
            back.hub_state,
            store=back.store,
            admins=[ADMIN],
            projects={PROJECT: [ALICE]},
            extra_env=env,
        )
        stacks.append(second)
        second.start(timeout=180)
        service = pwd.getpwnam(SERVICE)
        assert service.pw_uid != old_uid

        alice = HubBrowser(second.url, second.verify)
        alice.login(ALICE, alice_password, next_url="/hub/home")  # her old password
        assert volume_sums(second, alice.new_token()) == before
        admin = HubBrowser(second.url, second.verify)
        admin.login(ADMIN, admin_password, next_url="/hub/home")

        # the audit trail goes on from the restored records, and verifies with its checkpoints
        result = audit.verify(log, back.hub_state / "audit-checkpoints.jsonl")
        assert result, result
        assert len(audit.query(log)) > len(restored)

        # owners and modes: the service's files are its new uid's, every mode as it was
        assert modes(back.store) == store_modes
        for path in [back.store, *back.store.rglob("*")]:
            assert path.lstat().st_uid == service.pw_uid, path
        assert log.stat().st_uid == service.pw_uid and log.stat().st_mode & 0o777 == 0o600
        database = back.hub_state / "jupyterhub.sqlite"
        assert database.stat().st_uid == 0 and database.stat().st_mode & 0o777 == 0o600
        assert back.store.stat().st_mode & 0o777 == 0o700
    finally:
        for stack in stacks:
            stack.stop()
        for name in (ALICE, ADMIN):
            remove_account(name)
        remove_managed_group_if_unused()
        for name in (SERVICE, FILLER):
            subprocess.run(["userdel", name], capture_output=True, check=False)
            subprocess.run(["groupdel", name], capture_output=True, check=False)
        remove_group(PROJECT)
        shutil.rmtree(root, ignore_errors=True)
