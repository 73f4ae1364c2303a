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
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

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


STORE_SETTINGS = {
    "VOXELHUB_DATA_CATALOG_URL": "the catalog's SQLAlchemy URL (needed for object storage)",
    "VOXELHUB_DATA_STORAGE_OPTIONS_FILE": "JSON file of fsspec options, credentials included",
    "VOXELHUB_DATA_PRESIGN_SECONDS": "presigned URLs for chunk reads on S3 (0-3600; 0 = off)",
    "VOXELHUB_DATA_DICOMWEB_SERVERS": "DICOMweb roots curators may pull from (space-separated)",
    "VOXELHUB_DATA_DICOMWEB_CREDENTIALS_FILE": "JSON file of those servers' credentials (0600)",
    "VOXELHUB_SITE": "this site's pseudonym in the provenance of cohorts curators export",
}
"""The site's settings for the store the hub passes on to the data service, and what each is."""


def is_object_storage(store: str) -> bool:
    """``store`` is an fsspec URL (``s3://…``) rather than a folder on this machine."""
    scheme = urlparse(store).scheme
    return bool(scheme) and scheme != "file" and len(scheme) > 1  # C:\ is a folder


def store_environment(
    store: str, account: str = DEFAULT_ACCOUNT, settings: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The data service's environment for ``store``, from the site's ``VOXELHUB_DATA_*``.

    Object storage needs the catalog's URL.  Credentials come in a JSON file of fsspec options
    (``{"key": …, "secret": …, "endpoint_url": …}``) that only root and the service account
    may read: one readable by anyone else is refused (its secrets may have leaked: rotate them),
    the others are handed to the account, ``0600``.  Only the file's path travels, so no secret
    is in the hub's configuration or in any process's environment.  A SQLite catalog's folder
    becomes the account's, ``0700``.  Raises ``SystemExit`` naming the setting that is wrong.
    """
    settings = os.environ if settings is None else settings
    given = {k: settings[k] for k in STORE_SETTINGS if settings.get(k)}
    catalog = given.get("VOXELHUB_DATA_CATALOG_URL", "")
    if is_object_storage(store) and not catalog:
        raise SystemExit(
            f"VOXELHUB_STORE {store} is object storage: set VOXELHUB_DATA_CATALOG_URL to its "
            "catalog (postgresql+psycopg://… or sqlite:////srv/voxelhub/catalog/catalog.sqlite)"
        )
    if catalog.startswith("sqlite:///"):
        hand_over_catalog_folder(catalog.removeprefix("sqlite:///").split("?")[0], account)
    options = given.get("VOXELHUB_DATA_STORAGE_OPTIONS_FILE")
    if options:
        given["VOXELHUB_DATA_STORAGE_OPTIONS_FILE"] = str(hand_over_credentials(options, account))
    dicomweb = given.get("VOXELHUB_DATA_DICOMWEB_CREDENTIALS_FILE")
    if dicomweb:
        setting = "VOXELHUB_DATA_DICOMWEB_CREDENTIALS_FILE"
        given[setting] = str(hand_over_credentials(dicomweb, account, setting))
    seconds = given.get("VOXELHUB_DATA_PRESIGN_SECONDS", "0")
    if not seconds.isdigit() or not 0 <= int(seconds) <= 3600:
        raise SystemExit(f"VOXELHUB_DATA_PRESIGN_SECONDS must be 0-3600 seconds, not {seconds!r}")
    return given


def hand_over_catalog_folder(path: str, account: str = DEFAULT_ACCOUNT) -> None:
    """Give a SQLite catalog's folder to ``account`` (``0700``): it must hold nothing else, so
    a catalog put in ``/tmp`` or a home folder never takes that folder from everyone."""
    folder = Path(path).absolute().parent
    if not folder.is_dir():
        return  # made by the first ingest, under the account then
    companions = {Path(path).name + suffix for suffix in ("", "-wal", "-shm", "-journal")}
    others = sorted(p.name for p in folder.iterdir() if p.name not in companions)
    if others or folder == Path("/"):
        raise SystemExit(
            f"VOXELHUB_DATA_CATALOG_URL: {folder} holds more than the catalog "
            f"({', '.join(others[:3]) or '/'}); put the catalog in a folder of its own, which "
            "the data service's account will own"
        )
    hand_over_store(folder, account)


def hand_over_credentials(
    path: str | os.PathLike[str],
    account: str = DEFAULT_ACCOUNT,
    setting: str = "VOXELHUB_DATA_STORAGE_OPTIONS_FILE",
) -> Path:
    """Check a credentials file (regular, no link, nobody but its owner may read it, owned by
    root or ``account``) and make it ``account``'s, ``0600``; return its absolute path."""
    target = Path(path).absolute()
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        raise SystemExit(f"{setting} {target} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise SystemExit(f"{setting} {target} is not a regular file")
    if st.st_mode & 0o077:
        raise SystemExit(
            f"{setting} {target} is readable by others (mode "
            f"{st.st_mode & 0o777:o}): its credentials may have leaked; rotate them, then "
            "write the file again with mode 0600"
        )
    if os.geteuid() == 0:
        owner = pwd.getpwnam(account)
        if st.st_uid not in (0, owner.pw_uid):
            raise SystemExit(
                f"{setting} {target} belongs to uid {st.st_uid}: "
                f"only root or {account} may own the store's credentials"
            )
        os.lchown(target, owner.pw_uid, owner.pw_gid)
    os.chmod(target, 0o600)
    return target


def prepare_audit(folder: str | os.PathLike[str], account: str = DEFAULT_ACCOUNT) -> Path:
    """The audit folder (``0700``, the account's); returns the log's path inside it.

    Files already in it become the account's too: after a restore onto a new machine the log
    carries the old account's uid, and the service could not append to it."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        owner = pwd.getpwnam(account)
        os.chown(path, owner.pw_uid, owner.pw_gid)
        for entry in path.iterdir():
            os.lchown(entry, owner.pw_uid, owner.pw_gid)
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
