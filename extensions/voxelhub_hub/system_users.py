"""Unix accounts for hub users, created on demand before their server starts.

``LocalProcessSpawner`` runs each user's server as the unix user of the same name, so one user
cannot read another's files.  :func:`ensure_system_user` (a ``Spawner.pre_spawn_hook``) creates
that account the first time, with a private home (mode 0700, Debian's default is 0755) and
membership of :data:`MANAGED_GROUP`.

Safety rules, because a hub username becomes a uid the hub (running as root) switches to:

- the name must match :data:`USERNAME_RE` (also set as ``Authenticator.username_pattern``), which
  reserves the prefixes of project groups (``vhp-``) and of VoxelHub's own accounts
  (``voxelhub``): a user named ``vhp-lung`` could otherwise own a group the hub later adopts as
  project ``lung``'s;
- accounts get no personal group (``useradd --no-user-group``: their primary group is the system's
  ``users``), so no user name ever creates a group at all;
- an *existing* account is used only if it is a member of :data:`MANAGED_GROUP`, i.e. one this hook
  created; ``root``, ``daemon``, an operator's own login, … are refused, even if an admin
  approved a hub user of that name;
- uids below ``UID_MIN`` of ``/etc/login.defs`` are refused in any case.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re
import subprocess
from typing import Any

log = logging.getLogger(__name__)

#: unix group every hub-created account belongs to; marks accounts the hub may spawn as
MANAGED_GROUP = "voxelhub-users"
#: name prefixes a hub user may not take: project groups and VoxelHub's own accounts and groups
RESERVED_PREFIXES = ("vhp-", "voxelhub")
#: portable unix user names (POSIX, lower case, no leading digit or dash), at most 32 characters,
#: none starting with a reserved prefix
USERNAME_RE = re.compile(
    r"^(?!" + "|".join(re.escape(p) for p in RESERVED_PREFIXES) + r")[a-z_][a-z0-9_-]{0,31}$"
)


class UnsafeUsername(PermissionError):
    """A hub user must not map onto this unix account."""

    @property
    def jupyterhub_message(self) -> str:
        """What JupyterHub shows the user on a failed spawn (instead of a bare error 500)."""
        return f"Your server cannot start: {self}. Ask an administrator."


def _uid_min() -> int:
    try:
        with open("/etc/login.defs") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0] == "UID_MIN":
                    return int(parts[1])
    except OSError:
        pass
    return 1000


def _ensure_group(name: str) -> None:
    try:
        grp.getgrnam(name)
    except KeyError:
        subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)


def ensure_account(username: str, *, shell: str = "/bin/bash") -> pwd.struct_passwd:
    """Create (or check) the unix account of hub user ``username``; return its passwd entry."""
    if not USERNAME_RE.match(username):
        reserved = [p for p in RESERVED_PREFIXES if username.startswith(p)]
        why = f"names starting with {reserved[0]!r} are reserved" if reserved else "not valid"
        raise UnsafeUsername(f"hub user {username!r} cannot be a unix user name ({why})")
    _ensure_group(MANAGED_GROUP)
    try:
        entry = pwd.getpwnam(username)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--create-home",
                "--no-user-group",
                "--shell",
                shell,
                "--groups",
                MANAGED_GROUP,
                "--comment",
                "VoxelHub user",
                username,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(username)
        log.info("created unix account %s (uid %d)", username, entry.pw_uid)
    else:
        if username not in grp.getgrnam(MANAGED_GROUP).gr_mem:
            raise UnsafeUsername(
                f"unix account {username!r} exists and was not created by the hub "
                f"(not in group {MANAGED_GROUP}); refusing to run a server as it"
            )
    if entry.pw_uid < _uid_min():
        raise UnsafeUsername(f"unix account {username!r} is a system account (uid {entry.pw_uid})")
    os.chmod(entry.pw_dir, 0o700)
    return entry


def unreachable_folder(path: str | os.PathLike[str]) -> str | None:
    """The first folder on the way to ``path`` that other unix users cannot enter (no ``o+x``).

    A checkout under ``/root`` (mode 0700) is such a place: servers running as hub users, and
    the data service's account, could not execute the venv's Python there.
    """
    folder = os.path.realpath(path)
    blocked = None
    while True:
        if os.path.isdir(folder) and not os.stat(folder).st_mode & 0o001:
            blocked = folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return blocked
        folder = parent


def managed_uid(username: str) -> int | None:
    """The uid of ``username`` if the hub created that account (never root or a daemon)."""
    try:
        entry = pwd.getpwnam(username)
        members = grp.getgrnam(MANAGED_GROUP).gr_mem
    except KeyError:
        return None
    if username not in members or entry.pw_uid < _uid_min():
        return None
    return entry.pw_uid


def ensure_system_user(spawner: Any) -> None:
    """``Spawner.pre_spawn_hook``: make sure the user's unix account exists and is private."""
    ensure_account(spawner.user.name)


def remove_account(username: str) -> None:
    """Delete a hub-created account and its home (``userdel -r``); used by tests and the demo."""
    try:
        pwd.getpwnam(username)
    except KeyError:
        return
    if username not in grp.getgrnam(MANAGED_GROUP).gr_mem:
        raise UnsafeUsername(f"{username!r} was not created by the hub; not removing it")
    subprocess.run(["userdel", "-r", username], check=True, capture_output=True)


def remove_managed_group_if_unused() -> bool:
    """Delete :data:`MANAGED_GROUP` when no account is left in it; True if it was deleted."""
    try:
        group = grp.getgrnam(MANAGED_GROUP)
    except KeyError:
        return False
    if group.gr_mem or any(p.pw_gid == group.gr_gid for p in pwd.getpwall()):
        return False
    subprocess.run(["groupdel", MANAGED_GROUP], check=True, capture_output=True)
    return True
