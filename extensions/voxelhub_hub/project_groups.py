"""Projects as unix groups: a project's store folder is readable by its members only.

Hub groups are projects.  On one machine the hub (running as root) mirrors them in the file
system so that the operating system, not the notebook, keeps projects apart:

- every project ``p`` has a unix group :func:`unix_group` (``vhp-p``), created on demand;
- the store folder ``<store>/projects/p`` belongs to that group with mode ``2750``: the owner (the
  admin who ingests) writes, members read, nobody else may even list it.  The setgid bit makes
  every folder ingest adds below it belong to the group as well.  ``projects/`` itself stays
  listable (``0755``: the catalog names the projects anyway) and the store's ``.tmp`` area, where
  volumes are written before they are committed, is ``0700``;
- a user's membership of ``vhp-*`` groups is set to exactly their hub groups each time their server
  starts (:func:`sync_memberships`; ``Spawner.pre_spawn_hook``).  The server and its kernels, and
  the Dask Gateway workers started for that user, get their groups when they start, so a change an
  admin makes applies from the user's next server start.

On the hub with a store, the data service now owns the store (mode 0700, see
:mod:`voxelhub_hub.data_service`) and decides every read per project, so the hub no longer calls
:func:`secure_store`; it stays for a store shared without the service (and its tests).  The
memberships are still synced: Dask Gateway workers get the user's groups.

Unix group names are derived from project names (``vhp-`` + the name when it is a valid,
lower-case name of at most 28 characters, else a sanitised prefix plus 8 hex digits of its
SHA-256).  Only groups with the ``vhp-`` prefix are ever changed; a user's other groups are left
alone.  Everything here needs root and a local store; :func:`secure_store` is a no-op otherwise.
"""

from __future__ import annotations

import grp
import hashlib
import logging
import os
import pwd
import re
import stat
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: prefix of every unix group that mirrors a project; groups without it are never touched
GROUP_PREFIX = "vhp-"
#: mode of ``<store>/projects/<p>``: setgid, owner rwx, group r-x, others nothing
PROJECT_FOLDER_MODE = 0o2750
_MAX_GROUP_NAME = 32
_VALID = re.compile(r"^[a-z_][a-z0-9_.-]*$")


def unix_group(project: str) -> str:
    """The unix group that mirrors hub group (project) ``project``.

    >>> unix_group("lung")
    'vhp-lung'
    >>> unix_group("Lung CT/2024")
    'vhp-lung-ct-2024-b8bff56f'
    """
    if not project:
        raise ValueError("a project needs a name")
    name = GROUP_PREFIX + project
    if len(name) <= _MAX_GROUP_NAME and _VALID.match(name):
        return name
    digest = hashlib.sha256(project.encode()).hexdigest()[:8]
    clean = re.sub(r"[^a-z0-9_.-]+", "-", project.lower()).strip("-.")[:16]
    return f"{GROUP_PREFIX}{clean + '-' if clean else ''}{digest}"


def _gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class ForeignGroup(PermissionError):
    """A ``vhp-*`` group exists that the hub did not create; it is never adopted as a project's."""

    @property
    def jupyterhub_message(self) -> str:
        return f"Your server cannot start: {self}"


def adoptable(name: str) -> bool:
    """True if group ``name`` looks like one :func:`ensure_group` made: a system group (gid below
    ``UID_MIN``, as ``groupadd --system`` allocates) that is nobody's primary group and not
    named after an account (a personal group)."""
    from voxelhub_hub.system_users import _uid_min

    try:
        group = grp.getgrnam(name)
    except KeyError:
        return False
    if group.gr_gid >= _uid_min() or group.gr_gid == 0:
        return False
    accounts = pwd.getpwall()
    return not any(a.pw_name == name or a.pw_gid == group.gr_gid for a in accounts)


def ensure_group(project: str) -> int:
    """Create the unix group of ``project`` if missing; return its gid.

    An existing group of that name is used only if :func:`adoptable` (else :class:`ForeignGroup`).
    """
    name = unix_group(project)
    gid = _gid(name)
    if gid is not None and not adoptable(name):
        raise ForeignGroup(
            f"unix group {name} (for project {project!r}) exists but was not created by the hub "
            f"(it is a personal group, someone's primary group, or not a system group): remove "
            f"or rename it (groupdel {name}) and start again"
        )
    if gid is None:
        _run(["groupadd", "--system", name])
        gid = _gid(name)
        if gid is None:  # pragma: no cover - groupadd succeeded but NSS does not see it
            raise RuntimeError(f"groupadd {name} succeeded but the group is not visible")
        log.info("created unix group %s for project %s (gid %d)", name, project, gid)
    return gid


def remove_group(project: str) -> None:
    """Delete the unix group of ``project`` (tests, demo clean-up); a missing group is fine."""
    name = unix_group(project)
    if _gid(name) is not None:
        _run(["groupdel", name])


def secure_store(store: str | os.PathLike[str] | None) -> dict[str, Path]:
    """Give every ``<store>/projects/<p>`` folder its project's group and mode 2750.

    Returns ``{project: folder}`` for the folders it secured.  A store that is remote (a URL),
    missing, or has no ``projects/`` folder yet is left alone, and so is everything when not run
    as root.  Symbolic links are never followed.
    """
    if not store or "://" in str(store) or os.geteuid() != 0:
        return {}
    root = Path(store).resolve()
    projects = root / "projects"
    tmp = root / ".tmp"
    if tmp.is_dir() and not tmp.is_symlink():
        os.chmod(tmp, 0o700)  # volumes being written, of every project
    if not projects.is_dir() or projects.is_symlink():
        return {}
    os.chmod(projects, 0o755)
    done: dict[str, Path] = {}
    for entry in sorted(projects.iterdir()):
        st = entry.lstat()
        if not stat.S_ISDIR(st.st_mode):
            continue
        gid = ensure_group(entry.name)
        if st.st_gid != gid:
            os.chown(entry, -1, gid, follow_symlinks=False)
        if stat.S_IMODE(st.st_mode) != PROJECT_FOLDER_MODE:
            os.chmod(entry, PROJECT_FOLDER_MODE)
        done[entry.name] = entry
    return done


def memberships(username: str) -> set[str]:
    """Projects whose unix group ``username`` belongs to (by group name, ``vhp-*`` only)."""
    return {
        g.gr_name
        for g in grp.getgrall()
        if g.gr_name.startswith(GROUP_PREFIX) and username in g.gr_mem
    }


def sync_memberships(username: str, projects: Iterable[str]) -> tuple[set[str], set[str]]:
    """Make ``username`` a member of exactly the unix groups of ``projects`` (``vhp-*`` only).

    Returns the unix groups added and removed.  Other groups of the user are not touched.
    """
    wanted = {unix_group(p) for p in projects}
    for project in projects:
        ensure_group(project)
    current = memberships(username)
    added, removed = wanted - current, current - wanted
    for name in sorted(added):
        _run(["gpasswd", "--add", username, name])
    for name in sorted(removed):
        _run(["gpasswd", "--delete", username, name])
    if added or removed:
        log.info("unix groups of %s: +%s -%s", username, sorted(added), sorted(removed))
    return added, removed


def make_pre_spawn_hook(store: str | None) -> Any:
    """A ``Spawner.pre_spawn_hook``: the user's unix account, project groups and store folders.

    Runs in the hub (as root) before every server start: creates the account if needed
    (:func:`voxelhub_hub.system_users.ensure_system_user`), secures the store's project folders
    (new projects may have been ingested since the hub started) and sets the user's project
    groups to their hub groups.
    """
    from voxelhub_hub.system_users import ensure_system_user

    def pre_spawn(spawner: Any) -> None:
        ensure_system_user(spawner)
        secure_store(store)
        projects = sorted(g.name for g in spawner.user.groups)
        sync_memberships(spawner.user.name, projects)

    pre_spawn.__qualname__ = pre_spawn.__name__ = "voxelhub_pre_spawn"
    return pre_spawn


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
