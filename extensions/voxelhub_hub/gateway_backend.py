"""A Dask Gateway local backend that is safe to run as root.

dask-gateway-server 2026.3.0's ``LocalBackend.setup_working_directory`` calls
``paths.extend(cert_path)`` where ``append`` was meant, so ``set_file_permissions`` receives every
*character* of the certificate path and runs ``os.chown("/", user)`` as root before failing on
``"t"``.  :class:`SafeLocalBackend` builds the list correctly and, as a second line of defence,
refuses to chown anything that is not inside the cluster's own working directory (below
``clusters_directory``), and never follows a symlink while doing so.

It also adds a per-user limit on the number of active clusters, which dask-gateway-server no
longer has (``c.UserLimits`` was removed upstream; per-cluster cores/memory/workers limits live in
``c.ClusterConfig``).

On a shared machine (:class:`SafeLocalBackend`) schedulers and workers also

- join the user's cgroup and get the user's rlimits, as the hub decided them for the user's
  server (``<session_dir>/<user>.json``, written by ``VoxelHubSpawner``): kernels and workers
  share one budget, and a user with no running server gets no cluster;
- run without dashboards: dask-gateway serves them on the public port with no authentication
  and the processes would bind them on 127.0.0.1, where every local user could read another
  user's task names and logs.
"""

from __future__ import annotations

import json
import os
import resource
from typing import Any

from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.local import LocalBackend, UnsafeLocalBackend, getpwnam
from traitlets import Integer, Unicode
from traitlets.config import Configurable

from voxelhub_hub import cgroups


class UnsafeChown(RuntimeError):
    """A chown outside a cluster working directory was attempted (and refused)."""


def _inside(path: str, root: str) -> bool:
    """True if ``path`` is ``root`` or below it, comparing real paths (symlinks resolved)."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base + os.sep)


class ClusterCountLimitMixin(Configurable):
    """Refuse a new cluster when the user already has ``max_clusters_per_user`` active ones."""

    max_clusters_per_user = Integer(
        2,
        min=0,
        config=True,
        help="""
        Most active (pending or running) clusters one user may have at a time; 0 = no limit.
        A request over the limit is answered 422 with a message naming the limit.
        """,
    )

    async def start_cluster(self, user: Any, cluster_options: Any) -> Any:
        limit = self.max_clusters_per_user
        if limit:
            active = self.db.list_clusters(username=user.name)  # type: ignore[attr-defined]
            if len(active) >= limit:
                raise PublicException(
                    f"user {user.name} already has {len(active)} active cluster(s); "
                    f"the limit is {limit}: shut one down first"
                )
        return await super().start_cluster(user, cluster_options)  # type: ignore[misc]


class ScratchInWorkdirMixin:
    """Schedulers' and workers' scratch space (``dask-scratch-space``) inside the cluster's
    working directory, so it is private to the user and removed with the cluster (by default
    distributed leaves ``/tmp/dask-scratch-space-<uid>`` behind, owned by the user)."""

    def get_env(self, cluster: Any) -> dict[str, str]:
        env: dict[str, str] = super().get_env(cluster)  # type: ignore[misc]
        workdir = cluster.state.get("workdir")
        if workdir:
            env["DASK_TEMPORARY_DIRECTORY"] = workdir
        return env


class NoDashboardMixin:
    """Start schedulers and workers with ``--no-dashboard`` (nothing to proxy, nothing to bind)."""

    def get_scheduler_command(self, cluster: Any) -> list[str]:
        return _without_dashboard(super().get_scheduler_command(cluster))  # type: ignore[misc]

    def get_worker_command(self, cluster: Any, worker_name: str, *args: Any) -> list[str]:
        cmd = super().get_worker_command(cluster, worker_name, *args)  # type: ignore[misc]
        return _without_dashboard(cmd)


def _without_dashboard(cmd: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in cmd:
        if skip:
            skip = False
        elif arg == "--dashboard-address":
            skip = True
        else:
            out.append(arg)
    return [*out, "--no-dashboard"]


class NoSession(RuntimeError):
    """The user has no running server, so there is no budget to run their cluster in."""


class UserSessionMixin(Configurable):
    """Run schedulers and workers inside the user's session: same cgroup, same rlimits."""

    session_dir = Unicode(
        "",
        config=True,
        help="""
        Folder where the hub writes each running user's limits and cgroup folders
        (``<user>.json``; ``c.UserSession.session_dir`` of the hub).  Set: a cluster starts only
        for a user whose server runs, and its processes join that server's cgroup and rlimits.
        Empty: no such coupling (laptop).
        """,
    )

    def user_session(self, username: str) -> dict[str, Any]:
        """``{"rlimits": [[resource, value], ...], "cgroups": [folder, ...]}`` of ``username``."""
        if not self.session_dir:
            return {"rlimits": [], "cgroups": []}
        path = os.path.join(self.session_dir, f"{username}.json")
        try:
            with open(path) as f:
                session: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            raise NoSession(
                f"user {username} has no running JupyterLab server: start it first (Dask "
                f"clusters run inside the server's memory and process budget)"
            ) from None
        return session

    async def start_cluster(self, user: Any, cluster_options: Any) -> Any:
        try:
            self.user_session(user.name)
        except NoSession as e:
            raise PublicException(str(e)) from None
        return await super().start_cluster(user, cluster_options)  # type: ignore[misc]

    def make_preexec_fn(self, cluster: Any) -> Any:
        setuid = super().make_preexec_fn(cluster)  # type: ignore[misc]
        session = self.user_session(cluster.username)
        roots = list(session.get("cgroups", []))
        limits = [(int(which), int(value)) for which, value in session.get("rlimits", [])]
        username = cluster.username

        def preexec() -> None:
            if roots:
                cgroups.join(roots, username)  # as root, before the uid changes
            for which, value in limits:
                resource.setrlimit(which, (value, value))
            setuid()

        return preexec


class SafeLocalBackend(
    UserSessionMixin, NoDashboardMixin, ScratchInWorkdirMixin, ClusterCountLimitMixin, LocalBackend
):
    """``LocalBackend`` (schedulers and workers run as the requesting unix user), fixed.

    Needs ``clusters_directory`` (an absolute folder the gateway owns, traversable by users); each
    cluster gets ``<clusters_directory>/<cluster name>``, and only paths inside it are ever
    chowned.
    """

    def _cluster_root(self) -> str:
        root = self.clusters_directory
        if not root or not os.path.isabs(root) or os.path.realpath(root) == "/":
            raise UnsafeChown(
                f"SafeLocalBackend needs an absolute clusters_directory other than '/', got {root!r}"
            )
        return root

    def setup_working_directory(self, cluster: Any) -> str:
        root = self._cluster_root()
        workdir = os.path.join(root, cluster.name)
        if os.path.dirname(os.path.normpath(workdir)) != os.path.normpath(root):
            raise UnsafeChown(f"cluster name {cluster.name!r} escapes {root}")
        certsdir = self.get_certs_directory(workdir)
        logsdir = self.get_logs_directory(workdir)
        paths = [workdir, certsdir, logsdir]
        for path in paths:
            os.makedirs(path, 0o700, exist_ok=True)
        cert_path, key_path = self._get_tls_paths(workdir)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        for path, data in [(cert_path, cluster.tls_cert), (key_path, cluster.tls_key)]:
            with os.fdopen(os.open(path, flags, 0o600), "wb") as fil:
                fil.write(data)
            paths.append(path)  # upstream: paths.extend(path) -> chown("/") as root
        self.chown_inside(workdir, paths, cluster.username)
        self.log.debug("Working directory %s for cluster %s created", workdir, cluster.name)
        return workdir

    def chown_inside(self, workdir: str, paths: list[str], username: str) -> None:
        """Chown ``paths`` to ``username``; refuse (before touching any) if one is outside ``workdir``.

        ``workdir`` itself must be a direct child of ``clusters_directory``.
        """
        root = self._cluster_root()
        if os.path.dirname(os.path.realpath(workdir)) != os.path.realpath(root):
            raise UnsafeChown(f"{workdir!r} is not a cluster directory directly below {root}")
        bad = [p for p in paths if not isinstance(p, str) or not _inside(p, workdir)]
        if bad:
            raise UnsafeChown(
                f"refusing to chown {bad!r} to {username!r}: outside the cluster directory {workdir}"
            )
        pw = getpwnam(username)
        for p in paths:
            os.chown(p, pw.pw_uid, pw.pw_gid, follow_symlinks=False)

    def set_file_permissions(self, paths: list[str], username: str) -> None:
        """Guard for any other caller: only paths below ``clusters_directory`` may be chowned."""
        root = self._cluster_root()
        bad = [p for p in paths if not isinstance(p, str) or not _inside(p, root) or _same(p, root)]
        if bad:
            raise UnsafeChown(f"refusing to chown {bad!r}: outside {root}")
        pw = getpwnam(username)
        for p in paths:
            os.chown(p, pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def _same(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


class LaptopLocalBackend(ScratchInWorkdirMixin, ClusterCountLimitMixin, UnsafeLocalBackend):
    """``UnsafeLocalBackend`` + the per-user cluster limit: everything runs as the gateway's user.

    For a laptop without root only (no isolation between users); it never chowns anything.
    """
