"""Local spawners with per-user resource limits the kernel enforces (``setrlimit``).

JupyterHub's ``LocalProcessSpawner`` only *advertises* ``mem_limit`` / ``cpu_limit`` (as
``MEM_LIMIT`` / ``CPU_LIMIT`` in the server's environment); nothing enforces them.  Without
containers or a cgroup manager the limits one machine can enforce per process are rlimits, set
here between ``fork`` and ``exec`` and inherited by everything the server starts (kernels,
terminals, a ``LocalCluster`` a user makes by hand):

- ``process_memory_limit`` -> ``RLIMIT_AS``: address space *per process*.  A kernel that tries to
  allocate past it gets ``MemoryError`` instead of pushing the machine into swap or the OOM
  killer.  It counts virtual memory, so leave headroom: an idle scientific kernel (numpy, dask,
  zarr, pandas) maps about 2.5 GB while using 0.4 GB.
- ``max_processes`` -> ``RLIMIT_NPROC``: processes and threads of the user's uid (a fork bomb
  stops there).  Dask Gateway workers run as the same uid and count towards it.

Both are hard limits: the user cannot raise them.  CPU is *not* limited on one machine (an rlimit
on CPU seconds would kill long jobs, not share cores); Dask Gateway limits the cores of clusters
(``ClusterConfig.worker_cores`` / ``cluster_max_workers``), and KubeSpawner enforces
``cpu_limit`` and ``mem_limit`` as container limits (``hub_config/kubernetes/``).

Where the machine has cgroups (:mod:`voxelhub_hub.cgroups`) ``VoxelHubSpawner`` also puts the
server, and the Dask Gateway workers of the same user, in one cgroup per user whose memory limit
is ``Spawner.mem_limit`` (now enforced: kernels, terminals, workers and ``/dev/shm`` together) and
whose process limit is ``max_processes``.  When the server stops, every process of that user goes
with it: the cgroup is emptied and, with or without cgroups, every process still running under
the user's uid is killed (a ``nohup``/``setsid`` job no longer outlives the server or the hub).

Limits can differ by hub group (``group_limits``: research projects vs courses).  The server's
output goes to ``~/.local/state/voxelhub/server.log`` (0600, the user's own), not the hub's log.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import pwd
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner, SimpleLocalProcessSpawner
from jupyterhub.traitlets import ByteSpecification
from jupyterhub.utils import maybe_future
from traitlets import Bool, Dict, Integer, Unicode
from traitlets.config import Configurable

from voxelhub_hub import cgroups

#: where a user's server writes its output, below their home (never the hub's log)
SERVER_LOG = ".local/state/voxelhub/server.log"


@dataclass(frozen=True)
class Limits:
    """The limits one user's session gets (after ``group_limits``); None/0 = none."""

    mem_limit: int | None
    process_memory_limit: int | None
    max_processes: int

    def rlimits(self) -> list[tuple[int, int]]:
        """``[(resource, value)]`` to set in a child before it runs user code."""
        limits = []
        if self.process_memory_limit:
            limits.append((resource.RLIMIT_AS, int(self.process_memory_limit)))
        if self.max_processes:
            limits.append((resource.RLIMIT_NPROC, int(self.max_processes)))
        return limits

    def budget(self) -> cgroups.Budget:
        return cgroups.Budget(memory=self.mem_limit or None, pids=self.max_processes or None)


class ResourceLimits(Configurable):
    """Hard rlimits for a user's server and everything it starts (``c.ResourceLimits.*``)."""

    process_memory_limit = ByteSpecification(
        None,
        allow_none=True,
        config=True,
        help="""
        Address space (virtual memory) each process of a user's server may map: the server, each
        kernel, each process a kernel starts (RLIMIT_AS, hard).  Past it allocations fail with
        MemoryError.  Give headroom over resident use: an idle scientific kernel maps ~2.5 GB.
        Suffixes K, M, G, T.  None: no limit.
        """,
    )
    max_processes = Integer(
        0,
        min=0,
        config=True,
        help="""
        Processes plus threads the user's uid may have when the server or a kernel starts one
        (RLIMIT_NPROC, hard); counts every process of that unix user, Dask workers included.
        0: no limit.
        """,
    )

    group_limits = Dict(
        {},
        config=True,
        help="""
        Limits by hub group (a project or a course), overriding the defaults for its members, e.g.
        ``{"course-anatomy": {"mem_limit": "2G", "max_processes": 256,
        "process_memory_limit": "2G"}}``.  A user in several listed groups gets the largest value
        of each key; users in none get ``Spawner.mem_limit``, ``process_memory_limit`` and
        ``max_processes``.
        """,
    )

    def limits(self) -> Limits:
        """This user's limits: the defaults, raised or lowered by their groups' ``group_limits``."""
        mem = getattr(self, "mem_limit", None)
        chosen: dict[str, Any] = {
            "mem_limit": int(mem) if mem else None,
            "process_memory_limit": (
                int(self.process_memory_limit) if self.process_memory_limit else None
            ),
            "max_processes": int(self.max_processes),
        }
        user = getattr(self, "user", None)
        groups = {g.name for g in getattr(user, "groups", [])} if user is not None else set()
        overrides = [self.group_limits[g] for g in sorted(groups) if g in self.group_limits]
        for key in chosen:
            values = [_size(o[key]) for o in overrides if key in o]
            if values:
                chosen[key] = max(values)
        return Limits(**chosen)

    def rlimits(self) -> list[tuple[int, int]]:
        """``[(resource, value)]`` to set in the child before it runs the server."""
        return self.limits().rlimits()

    def with_rlimits(
        self, preexec: Callable[[], None] | None, before: Callable[[], None] | None = None
    ) -> Callable[[], None]:
        """Wrap a ``preexec_fn``: ``before`` and the hard limits first (as root), then ``preexec``."""
        limits = self.rlimits()

        def apply() -> None:
            if before is not None:
                before()
            for which, value in limits:
                resource.setrlimit(which, (value, value))
            if preexec is not None:
                preexec()

        return apply

    # cooperative overrides: the mixin comes first, super() is the spawner it is mixed into
    def make_preexec_fn(self, name: str) -> Callable[[], None]:
        return self.with_rlimits(super().make_preexec_fn(name))  # type: ignore[misc]

    def get_env(self) -> dict[str, Any]:
        env: dict[str, Any] = super().get_env()  # type: ignore[misc]
        env.update(self.limits_environment())
        return env

    def limits_environment(self) -> dict[str, str]:
        """What the server is told about its limits (beside JupyterHub's MEM_LIMIT/CPU_LIMIT)."""
        limits = self.limits()
        env = {}
        if limits.mem_limit:
            env["MEM_LIMIT"] = str(limits.mem_limit)
        if limits.process_memory_limit:
            env["VOXELHUB_PROCESS_MEMORY_LIMIT"] = str(limits.process_memory_limit)
        if limits.max_processes:
            env["VOXELHUB_MAX_PROCESSES"] = str(limits.max_processes)
        return env


def _size(value: Any) -> int:
    """``"2G"`` -> bytes; numbers stay numbers (``group_limits`` values)."""
    if isinstance(value, str):
        units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
        text = value.strip().upper()
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    return int(value)


class UserSession(Configurable):
    """One cgroup per user, private server output, and a full stop (``c.UserSession.*``)."""

    use_cgroups = Bool(
        True,
        config=True,
        help="""
        Put each user's server, kernels, terminals and Dask Gateway workers in one cgroup
        (memory = ``Spawner.mem_limit``, processes = ``max_processes``) where the machine has
        cgroups (v2 with memory and pids delegated to the hub, or v1); False: rlimits only.
        """,
    )
    cgroup_name = Unicode(
        "voxelhub",
        config=True,
        help="""
        Folder, below the hub's own cgroup, that holds the user cgroups (one per hub on a machine).
        """,
    )
    session_dir = Unicode(
        "",
        config=True,
        help="""
        Root-only folder (0700) where the hub writes each running user's limits and cgroup
        folders (``<user>.json``) for the Dask Gateway, whose workers join the same cgroup and
        get the same rlimits, and which starts clusters only for users listed there.  Empty: not
        written (set the gateway's ``session_dir`` empty too: no coupling, as on a laptop).
        """,
    )

    def user_cgroups(self) -> cgroups.UserCgroups | None:
        """The hub's user cgroups, or None (no cgroups here, not root, or turned off)."""
        return _detect_once(self.cgroup_name) if self.use_cgroups else None


@functools.cache
def _detect_once(name: str) -> cgroups.UserCgroups | None:
    return cgroups.detect(name)


def remove_user_cgroups(name: str) -> None:
    """Hub exit: delete the hub's user cgroups (``name``) and any process left in them."""
    tree = _detect_once(name)
    if tree is not None:
        tree.remove_all()


class VoxelHubSpawner(ResourceLimits, LocalProcessSpawner):
    """``LocalProcessSpawner`` (the server runs as the unix user of the same name) + limits, a
    per-user cgroup, private output, and a stop that leaves none of the user's processes."""

    def _session(self) -> UserSession:
        return UserSession(parent=self)

    async def start(self) -> Any:
        limits = self.limits()
        tree = self._session().user_cgroups()
        if tree is not None:
            tree.create(self.user.name, limits.budget())
        self._write_session(limits, tree)
        return await super().start()

    def make_preexec_fn(self, name: str) -> Callable[[], None]:
        tree = self._session().user_cgroups()
        roots = tree.bases if tree is not None else []
        home = pwd.getpwnam(name).pw_dir

        def join() -> None:
            if roots:
                cgroups.join(roots, name)

        setuid = LocalProcessSpawner.make_preexec_fn(self, name)

        def as_user() -> None:
            setuid()
            _private_output(os.path.join(home, SERVER_LOG))

        return self.with_rlimits(as_user, before=join)

    async def run_post_stop_hook(self) -> None:
        await maybe_future(super().run_post_stop_hook())
        await asyncio.to_thread(self.stop_session)

    def stop_session(self) -> int:
        """Kill every process left in the user's cgroup and under their uid; return how many."""
        from voxelhub_hub.system_users import managed_uid

        name = self.user.name
        killed = 0
        self._remove_session()  # first: from now on the gateway starts no cluster for this user
        tree = self._session().user_cgroups()
        if tree is not None:
            killed += tree.kill(name)
            tree.remove(name)
        uid = managed_uid(name)  # None unless a hub-created account: never root or a daemon
        if uid is not None:
            killed += cgroups.kill_until_gone(lambda: cgroups.processes_of_uid(uid), 10.0)
        if killed:
            self.log.info("stopped %d leftover process(es) of %s", killed, name)
        return killed

    def _session_file(self) -> Path | None:
        folder = self._session().session_dir
        return Path(folder) / f"{self.user.name}.json" if folder else None

    def _write_session(self, limits: Limits, tree: cgroups.UserCgroups | None) -> None:
        path = self._session_file()
        if path is None:
            return
        path.parent.mkdir(mode=0o700, exist_ok=True)
        data = {
            "rlimits": limits.rlimits(),
            "cgroups": [str(b) for b in tree.bases] if tree is not None else [],
        }
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)

    def _remove_session(self) -> None:
        path = self._session_file()
        if path is not None:
            path.unlink(missing_ok=True)


def _private_output(path: str) -> None:
    """In the child, as the user: send stdout/stderr to ``path`` (0600), not the hub's log.

    Opened as the user (after setuid), never following a symlink, so a link planted there
    cannot make the hub write anywhere the user could not.  If it cannot be opened, output is
    dropped rather than shown to the hub's log readers.
    """
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    except OSError:
        fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class VoxelHubLaptopSpawner(ResourceLimits, SimpleLocalProcessSpawner):
    """``SimpleLocalProcessSpawner`` (everyone runs as the hub's user, NO isolation) + rlimits."""
