"""The data service's place on one machine: its own account, the store closed to everyone else.

The hub (root) prepares, before it starts the service and again before every user's server
starts:

- a system account (default ``voxelhub-data``, no login shell, no home) that alone runs the
  service;
- the store handed to that account, mode ``0700`` at its root: users, their kernels and their
  Dask workers cannot open a file of it; they read through the service with their hub token;
- the audit folder (``0700``, the account's) holding the hash-chained log, and beside it, owned
  by root, the checkpoints of the chain's head that the account cannot rewrite
  (:func:`checkpoint_loop`, run by the hub as a second managed service, as root).

Volumes ingested later by root (``voxelhub ingest`` as an admin) are handed over on the next
server start or hub restart; ingest as the account (``runuser -u voxelhub-data -- voxelhub
ingest …``) to make them visible at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import stat
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_ACCOUNT = "voxelhub-data"


def ensure_service_account(name: str = DEFAULT_ACCOUNT) -> pwd.struct_passwd:
    """The service's system account, created if missing (no login, no home)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
            name,
        ],
        check=True,
        capture_output=True,
    )
    log.info("created system account %s for the data service", name)
    return pwd.getpwnam(name)


def hand_over_store(store: str | os.PathLike[str], account: str = DEFAULT_ACCOUNT) -> int:
    """Make ``account`` own every file of the store; the root ``0700``. Returns files changed.

    Symbolic links are never followed (``lchown``).  Only entries not already owned by the
    account are touched, so a second call on a large store is a walk, not a rewrite.
    """
    if os.geteuid() != 0:
        return 0
    root = Path(store)
    if not root.is_dir() or root.is_symlink():
        return 0
    owner = pwd.getpwnam(account)
    changed = 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in [*dirs, *files]:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if st.st_uid != owner.pw_uid or st.st_gid != owner.pw_gid:
                os.lchown(path, owner.pw_uid, owner.pw_gid)
                changed += 1
    os.chown(root, owner.pw_uid, owner.pw_gid)
    os.chmod(root, 0o700)
    return changed


def hand_over_key_file(
    key_file: str | os.PathLike[str], store: str | os.PathLike[str], account: str = DEFAULT_ACCOUNT
) -> None:
    """Make the master key file of encrypted projects the service account's, mode ``0600``.

    It must be a regular file outside the store (a copy of the store, or a backup of it, must
    not carry the key that opens it); its folder must let the account through (``0711``)."""
    path = Path(key_file)
    st = os.lstat(path)  # FileNotFoundError: the hub does not start without its key
    if not stat.S_ISREG(st.st_mode):
        raise SystemExit(f"VOXELHUB_KEY_FILE {path} is not a regular file")
    if path.resolve().is_relative_to(Path(store).resolve()):
        raise SystemExit(f"VOXELHUB_KEY_FILE {path} is inside the store {store}: move it out")
    if os.geteuid() == 0:
        owner = pwd.getpwnam(account)
        os.lchown(path, owner.pw_uid, owner.pw_gid)
    os.chmod(path, 0o600)


def prepare_audit(folder: str | os.PathLike[str], account: str = DEFAULT_ACCOUNT) -> Path:
    """The audit folder (``0700``, the account's); returns the log's path inside it."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        owner = pwd.getpwnam(account)
        os.chown(path, owner.pw_uid, owner.pw_gid)
    os.chmod(path, 0o700)
    return path / "audit.log"


def checkpoint_loop(log_path: str, checkpoints: str, every: float) -> None:
    """Append the chain's head to ``checkpoints`` every ``every`` seconds (run as root)."""
    from voxelhub.audit import checkpoint

    Path(checkpoints).touch(mode=0o600, exist_ok=True)
    while True:
        if os.path.exists(log_path):
            try:
                checkpoint(log_path, checkpoints)
            except Exception as exc:  # keep checkpointing; the next verify will say what broke
                log.error("checkpoint of %s failed: %s", log_path, exc)
        time.sleep(every)


def main() -> None:
    parser = argparse.ArgumentParser(description="checkpoint the audit chain's head periodically")
    parser.add_argument("log")
    parser.add_argument("checkpoints")
    parser.add_argument("--every", type=float, default=60.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    checkpoint_loop(args.log, args.checkpoints, args.every)


if __name__ == "__main__":
    main()
