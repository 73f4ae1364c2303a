"""One cgroup per hub user: a memory and process budget for everything the user runs, and a stop.

rlimits (:mod:`voxelhub_hub.spawner`) hold per process: three kernels of 3 GB each pass a 4 GB
``RLIMIT_AS``, and ``RLIMIT_NPROC`` counts the uid but not memory.  A control group counts the
user's server, kernels, terminals and Dask Gateway workers *together*, including the pages they put
in ``/dev/shm`` (shared memory is charged to the cgroup that touched it), and lets the hub stop all
of them when the server stops, which a process tree does not (a ``setsid`` + double fork escapes it).

The hub (root) creates ``<root>/<user>`` below a folder of its own in each hierarchy, **nested
under the hub's own cgroup** so that limits a container or systemd put on the hub still apply, sets
the budget, and the spawner's and the gateway's ``preexec_fn`` move the new process into it before
dropping to the user's uid.  A process cannot leave: ``cgroup.procs`` is root's.

- cgroup v2 (one unified hierarchy) is used when the hub's cgroup offers the ``memory`` and ``pids``
  controllers to its children (systemd's ``Delegate=yes`` does that);
- cgroup v1 (separate ``memory`` and ``pids`` hierarchies, as on this project's CI machines) is used
  when both are mounted and writable;
- otherwise :func:`detect` returns ``None`` and the hub falls back to rlimits and to stopping the
  user's processes by uid.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MOUNT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Budget:
    """What one user's processes may use together; ``None`` means no limit."""

    memory: int | None = None
    pids: int | None = None


@dataclass(frozen=True)
class Hierarchy:
    """One place user cgroups are made: ``<base>/<user>``, with the files that set the budget."""

    base: Path
    memory_file: str | None  # "memory.max" (v2), "memory.limit_in_bytes" (v1), or None
    swap_file: str | None  # swap counted with memory where the kernel offers it
    pids_file: str | None  # "pids.max" (v1 and v2)
    enable: str = ""  # v2: controllers the base hands on to the user cgroups ("+memory +pids")


class UserCgroups:
    """The user cgroups of one hub, in every hierarchy it uses (one for v2, two for v1)."""

    def __init__(self, hierarchies: list[Hierarchy]) -> None:
        if not hierarchies:
            raise ValueError("no cgroup hierarchy")
        self.hierarchies = hierarchies

    @property
    def bases(self) -> list[Path]:
        """The hub's own folders, one per hierarchy (passed to the gateway as ``roots``)."""
        return [h.base for h in self.hierarchies]

    def create(self, user: str, budget: Budget) -> None:
        """Make (or update) ``user``'s cgroup with ``budget``."""
        _check_name(user)
        for h in self.hierarchies:
            if not h.base.is_dir():
                h.base.mkdir()
                if h.enable:
                    _write(h.base / "cgroup.subtree_control", h.enable)
            folder = h.base / user
            folder.mkdir(exist_ok=True)
            if h.memory_file:
                limit = "max" if budget.memory is None else str(budget.memory)
                if h.memory_file.endswith("limit_in_bytes") and budget.memory is None:
                    limit = "-1"
                _write(folder / h.memory_file, limit)
                if h.swap_file and (folder / h.swap_file).exists():
                    # v2: no swap at all beyond memory; v1: memory+swap equal to memory
                    swap = "0" if h.swap_file == "memory.swap.max" else limit
                    with contextlib.suppress(OSError):
                        _write(folder / h.swap_file, swap)
            if h.pids_file:
                _write(folder / h.pids_file, "max" if budget.pids is None else str(budget.pids))

    def processes(self, user: str) -> set[int]:
        """PIDs in ``user``'s cgroup (every hierarchy)."""
        _check_name(user)
        pids: set[int] = set()
        for base in self.bases:
            pids |= _procs(base / user)
        return pids

    def kill(self, user: str, timeout: float = 10.0) -> int:
        """SIGKILL every process in ``user``'s cgroup until none is left; return how many."""
        return kill_until_gone(lambda: self.processes(user), timeout)

    def remove(self, user: str) -> None:
        """Kill what is left and delete ``user``'s cgroup folders."""
        self.kill(user)
        for base in self.bases:
            folder = base / user
            with contextlib.suppress(FileNotFoundError):
                _rmdir_when_empty(folder)

    def remove_all(self) -> None:
        """Delete every user cgroup and the hub's own folders (hub shutdown, tests)."""
        for base in self.bases:
            if base.is_dir():
                for child in base.iterdir():
                    if child.is_dir():
                        self.remove(child.name)
                with contextlib.suppress(OSError):
                    _rmdir_when_empty(base)


def join(roots: list[str] | list[Path], user: str) -> None:
    """Move the calling process into ``user``'s cgroup below each of ``roots``.

    Called in a ``preexec_fn`` (as root, before the uid changes); a missing cgroup is an error so
    that no process of a user escapes the budget unnoticed.
    """
    _check_name(user)
    for root in roots:
        _write(Path(root) / user / "cgroup.procs", "0")


def detect(name: str) -> UserCgroups | None:
    """The user cgroups hub ``name`` can manage on this machine, or None (then: rlimits only)."""
    if os.geteuid() != 0:
        return None
    own = _own_cgroups()
    v2 = _detect_v2(own.get(""), name)
    if v2 is not None:
        return UserCgroups([v2])
    memory, pids = own.get("memory"), own.get("pids")
    if memory is None or pids is None:
        return None
    levels = []
    for controller, path in (("memory", memory), ("pids", pids)):
        base = MOUNT / controller / path.lstrip("/") / name
        if not _writable_here(base):
            return None
        levels.append(base)
    return UserCgroups(
        [
            Hierarchy(levels[0], "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", None),
            Hierarchy(levels[1], None, None, "pids.max"),
        ]
    )


def _detect_v2(own: str | None, name: str) -> Hierarchy | None:
    if own is None or not (MOUNT / "cgroup.controllers").is_file():
        return None  # no unified hierarchy at /sys/fs/cgroup
    here = MOUNT / own.lstrip("/")
    try:
        offered = (here / "cgroup.subtree_control").read_text().split()
    except OSError:
        return None
    if "memory" not in offered or "pids" not in offered:
        return None  # the hub's cgroup does not delegate memory and pids to its children
    base = here / name
    if not _writable_here(base):
        return None
    return Hierarchy(base, "memory.max", "memory.swap.max", "pids.max", "+memory +pids")


def _own_cgroups() -> dict[str, str]:
    """``{controller: path}`` of this process (``""`` is the v2 unified hierarchy)."""
    found: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                found[controller] = path
    return found


def _writable_here(base: Path) -> bool:
    """Can we make ``base`` (a read-only cgroupfs in a container says no)?  Leaves nothing
    behind: :meth:`UserCgroups.create` makes it when a user first needs it."""
    if base.is_dir():
        return (base / "cgroup.procs").exists()
    try:
        base.mkdir()
    except OSError:
        return False
    try:
        return (base / "cgroup.procs").exists()
    finally:
        with contextlib.suppress(OSError):
            base.rmdir()


def kill_until_gone(pids_now: Callable[[], set[int]], timeout: float) -> int:
    """SIGKILL what ``pids_now()`` returns, again and again, until it returns nothing."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        pids = {p for p in pids_now() if p > 1 and p != os.getpid()}
        if not pids:
            return len(killed)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes still alive after SIGKILL: {sorted(pids)}")
        time.sleep(0.05)


def processes_of_uid(uid: int) -> set[int]:
    """PIDs whose real or effective uid is ``uid`` (``/proc``), for hubs without cgroups."""
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        real, effective = line.split()[1:3]
                        if uid in (int(real), int(effective)):
                            found.add(int(entry.name))
                        break
        except OSError:
            continue
    return found


def _procs(folder: Path) -> set[int]:
    try:
        return {int(p) for p in (folder / "cgroup.procs").read_text().split()}
    except FileNotFoundError:
        return set()


def _rmdir_when_empty(folder: Path, timeout: float = 5.0) -> None:
    """rmdir a cgroup; it is busy for a moment after its last process was reaped."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            folder.rmdir()
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _check_name(user: str) -> None:
    if not user or "/" in user or user in (".", ".."):
        raise ValueError(f"not a user name for a cgroup: {user!r}")
