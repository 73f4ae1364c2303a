"""Where things are: the store, the catalog and the project secrets, from the environment.

Kernels on the hub get these variables from the spawner, so ``voxelhub.open_catalog()`` works
with no arguments there; on a laptop the arguments are given explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

STORE_ENV = "VOXELHUB_STORE"
CATALOG_ENV = "VOXELHUB_CATALOG_URL"
SECRETS_ENV = "VOXELHUB_SECRETS_DIR"
EXPORT_ENV = "VOXELHUB_EXPORT_DIR"
KEY_FILE_ENV = "VOXELHUB_KEY_FILE"


def default_store() -> str | None:
    """The store URL from ``$VOXELHUB_STORE``, if set."""
    return os.environ.get(STORE_ENV) or None


def secrets_dir() -> Path:
    """Folder of per-project de-identification secrets: kept apart from the store on purpose.

    ``$VOXELHUB_SECRETS_DIR``, else ``$XDG_CONFIG_HOME/voxelhub/secrets``
    (``~/.config/voxelhub/secrets``).
    """
    env = os.environ.get(SECRETS_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "voxelhub" / "secrets"


def export_dir() -> Path:
    """Where ``voxelhub export`` writes when no path is given: the user's own folder.

    ``$VOXELHUB_EXPORT_DIR``, else ``~/voxelhub-exports``; never the system's shared
    temporary folder, where other users could list (and, with a loose umask, read) the files.
    """
    env = os.environ.get(EXPORT_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.path.expanduser("~")) / "voxelhub-exports"


def key_file() -> Path | None:
    """The master key file of encrypted projects (``$VOXELHUB_KEY_FILE``), if set.

    Only the ingest path and the data service are given it: users' kernels read plaintext from
    the service and never hold a key.  Keep it outside the store, mode 0600.
    """
    env = os.environ.get(KEY_FILE_ENV)
    return Path(env).expanduser() if env else None
