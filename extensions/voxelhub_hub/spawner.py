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
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner, SimpleLocalProcessSpawner
from jupyterhub.traitlets import ByteSpecification
from traitlets import Integer
from traitlets.config import Configurable


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

    def rlimits(self) -> list[tuple[int, int]]:
        """``[(resource, value)]`` to set in the child before it runs the server."""
        limits = []
        if self.process_memory_limit:
            limits.append((resource.RLIMIT_AS, int(self.process_memory_limit)))
        if self.max_processes:
            limits.append((resource.RLIMIT_NPROC, int(self.max_processes)))
        return limits

    def with_rlimits(self, preexec: Callable[[], None] | None) -> Callable[[], None]:
        """Wrap a ``preexec_fn``: set the hard limits first (as root), then run ``preexec``."""
        limits = self.rlimits()

        def apply() -> None:
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
        env = {}
        if self.process_memory_limit:
            env["VOXELHUB_PROCESS_MEMORY_LIMIT"] = str(int(self.process_memory_limit))
        if self.max_processes:
            env["VOXELHUB_MAX_PROCESSES"] = str(self.max_processes)
        return env


class VoxelHubSpawner(ResourceLimits, LocalProcessSpawner):
    """``LocalProcessSpawner`` (the server runs as the unix user of the same name) + rlimits."""


class VoxelHubLaptopSpawner(ResourceLimits, SimpleLocalProcessSpawner):
    """``SimpleLocalProcessSpawner`` (everyone runs as the hub's user, NO isolation) + rlimits."""
