"""Autograding kernels in a bubblewrap sandbox: submitted code never sees the grader's secrets.

``nbgrader autograde`` runs every submission's code as the grader account.  Unsandboxed, that
code could read the grader server's hub token (its environment, or ``/proc/<pid>/environ``, same
uid), collect every student's submission at the exchange with it, and rewrite the gradebook.
Here each grading kernel starts through ``bwrap`` (Debian's ``bubblewrap``) with:

- new user, PID, IPC and UTS namespaces: no other process of the grader is visible;
- an environment built from scratch (:attr:`GradingSandbox.environment`): no hub token; the
  data service gets the grader's *data-only* token (:attr:`GradingSandbox.data_token_variable`,
  made by the hub, scope ``access:services!service=voxelhub-data``) as ``$JUPYTERHUB_API_TOKEN``;
- the whole filesystem read-only, the grader's home and the course folder replaced by empty
  read-only ones, the temporary folders by empty private ones, and only the submission's own
  autograded folder writable;
- the kernel's connection over unix sockets in a private folder (no TCP port another local
  user could subscribe to), ``--die-with-parent``.

Where bwrap cannot make its namespaces (no unprivileged user namespaces, e.g. a Kubernetes pod
without them), grading refuses with :class:`GradingSandboxUnavailable` naming why, unless the
deployment sets ``GradingSandbox.allow_unsandboxed = True``.  Configured in
``hub_config/jupyter/nbgrader_config.py`` (``Autograde.autograde_preprocessors``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from nbgrader.preprocessors import Execute
from traitlets import Bool, List, Unicode
from traitlets.config import Configurable

from voxelhub.errors import VoxelHubError

log = logging.getLogger(__name__)

#: where the hub puts the grader server's data-only token (``voxelhub_hub.grading_token``)
DATA_TOKEN_VARIABLE = "VOXELHUB_GRADING_DATA_TOKEN"


#: what a kernel needs of the grader's environment: locale, the store, the server's limits
KERNEL_ENVIRONMENT = [
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "PYTHONPATH",
    "VOXELHUB_STORE",
    "VOXELHUB_CATALOG_URL",
    "MEM_LIMIT",
    "CPU_LIMIT",
    "VOXELHUB_PROCESS_MEMORY_LIMIT",
    "VOXELHUB_MAX_PROCESSES",
]


class GradingSandboxUnavailable(VoxelHubError):
    """bwrap cannot make a sandbox here, and running submissions unsandboxed was not allowed."""


class GradingSandbox(Configurable):
    """How a grading kernel is confined (``c.GradingSandbox.*`` in an nbgrader config)."""

    bwrap = Unicode("bwrap", help="The bubblewrap executable (Debian package bubblewrap).").tag(
        config=True
    )
    allow_unsandboxed = Bool(
        False,
        help="Run submissions without a sandbox where bwrap cannot make one (no unprivileged "
        "user namespaces).  Submitted code then runs with the grader's rights, environment and "
        "hub token.  Only for deployments that confine the whole grader otherwise.",
    ).tag(config=True)
    share_network = Bool(
        True,
        help="Keep the host's network: a kernel reaches the data service on 127.0.0.1 with the "
        "data-only token (hub and exchange refuse that token).  False cuts every network "
        "connection, for exercises that read no data through the service.",
    ).tag(config=True)
    environment = List(
        Unicode(),
        KERNEL_ENVIRONMENT,
        help="Variables of the grader's environment a grading kernel gets (when set); nothing "
        "else passes.  Never list a secret here.",
    ).tag(config=True)
    data_token_variable = Unicode(
        DATA_TOKEN_VARIABLE,
        help="The grader's variable holding a data-only hub token; the kernel gets it as "
        "$JUPYTERHUB_API_TOKEN (what voxelhub.open_catalog() sends to the data service).  "
        "Unset: the kernel has no token.",
    ).tag(config=True)
    hidden = List(
        Unicode(),
        ["~", "/run/user"],
        help="Folders replaced by empty, read-only ones in the sandbox ('~' is the grader's "
        "home); the course folder (above autograded/STUDENT/ASSIGNMENT) is always hidden too.",
    ).tag(config=True)
    scratch = List(
        Unicode(),
        ["/tmp", "/var/tmp", "/dev/shm"],  # not-an-output: these are hidden from the kernel
        help="Folders replaced by empty, writable ones private to one kernel (temporary files).",
    ).tag(config=True)
    read_only = List(
        Unicode(),
        [],
        help="Folders under a hidden or scratch one that kernels still read (e.g. a local store "
        "kept in a temporary folder).",
    ).tag(config=True)

    def check(self) -> bool:
        """True when bwrap works here; raise when it does not and that is not allowed."""
        problem = _bwrap_problem(self.bwrap)
        if not problem:
            return True
        if self.allow_unsandboxed:
            log.warning("grading WITHOUT a sandbox (GradingSandbox.allow_unsandboxed): %s", problem)
            return False
        raise GradingSandboxUnavailable(
            f"autograding refuses to run submitted code: no sandbox, {problem}.  Give the grader "
            f"unprivileged user namespaces (see the README, Teaching labs), or set "
            f"GradingSandbox.allow_unsandboxed = True to run it with the grader's rights"
        )

    def command(self, kernel: list[str], workdir: Path, private: Path) -> list[str]:
        """``kernel`` wrapped in bwrap: ``workdir`` writable, ``private`` (the connection)."""
        args = [self.bwrap, "--unshare-all", "--die-with-parent", "--cap-drop", "ALL"]
        # ipykernel exits when its parent is not the pid it was told (PID 1 in here);
        # --die-with-parent does that job
        args += ["--unsetenv", "JPY_PARENT_PID"]
        if self.share_network:
            args.append("--share-net")
        args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        course = workdir.parents[2] if len(workdir.parents) > 3 else None
        hidden = [Path(os.path.expanduser(p)) for p in self.hidden]
        if course is not None and workdir.parents[1].name == "autograded":
            hidden.append(course)
        hidden = [p for p in hidden if p.is_dir() and p != Path("/")]
        for path in [*(Path(p) for p in self.scratch), *hidden]:
            if path.is_dir() and path != Path("/"):
                args += ["--tmpfs", str(path)]
        for ro in self.read_only:
            args += ["--ro-bind", ro, ro]
        args += ["--bind", str(private), str(private), "--bind", str(workdir), str(workdir)]
        for path in hidden:  # last: the binds above made their mount points in there
            args += ["--remount-ro", str(path)]
        return [*args, "--chdir", str(workdir), "--", *kernel]

    def kernel_environment(self) -> dict[str, str]:
        """The kernel's whole environment: the allowed variables, a home, the data token."""
        env = {k: os.environ[k] for k in self.environment if k in os.environ}
        env["HOME"] = os.path.expanduser("~")  # an empty tmpfs inside
        env.setdefault("PATH", "/usr/bin:/bin")
        token = os.environ.get(self.data_token_variable, "") if self.data_token_variable else ""
        if token:
            env["JUPYTERHUB_API_TOKEN"] = token
        return env


@cache
def _bwrap_problem(bwrap: str) -> str:
    """Why bwrap cannot make the sandbox here ('' when it can)."""
    exe = shutil.which(bwrap)
    if exe is None:
        return f"{bwrap!r} is not installed (Debian package bubblewrap)"
    probe = [exe, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc"]
    try:
        r = subprocess.run([*probe, "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap did not run: {exc}"
    if r.returncode:
        return f"bwrap cannot make its namespaces here: {r.stderr.strip() or r.returncode}"
    return ""


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels start inside :class:`GradingSandbox`."""

    _private: Path | None = None
    _sandboxed = False

    async def _async_pre_start_kernel(self, **kw: Any) -> tuple[list[str], dict[str, Any]]:
        sandbox = GradingSandbox(parent=self)
        self._sandboxed = sandbox.check()
        if self._sandboxed and self._private is None:
            # the connection file and its unix sockets: one private folder per kernel
            self._private = Path(tempfile.mkdtemp(prefix="vhgrade-"))
            self.transport = "ipc"
            self.connection_file = str(self._private / "kernel.json")
            self.ip = str(self._private / "kernel-ipc")
        return await super()._async_pre_start_kernel(**kw)

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        if self._sandboxed and self._private is not None:
            sandbox = GradingSandbox(parent=self)
            workdir = Path(kw.get("cwd") or os.getcwd()).resolve()
            kernel_cmd = sandbox.command(kernel_cmd, workdir, self._private)
            kw["env"] = sandbox.kernel_environment()
        await super()._async_launch_kernel(kernel_cmd, **kw)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart and self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None


class SandboxedExecute(Execute):
    """nbgrader's Execute preprocessor, its kernels in the sandbox (autograde only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["kernel_manager_class"] = SandboxedKernelManager
        super().__init__(*args, **kwargs)
