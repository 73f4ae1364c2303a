"""Start and stop the whole hub stack (hub -> proxy, gateway, idle culler) as one process tree.

Used by ``make hub-demo`` and the end-to-end tests::

    stack = HubStack(state_dir, store=store, admins=["admin"], projects={"demo": ["alice"]}, tls=True)
    stack.start()          # free ports, waits for the hub API and the gateway health check
    ...
    survivors = stack.stop()   # SIGTERM to the hub, then every recorded process by PID

Only the hub is started here; it starts configurable-http-proxy and its managed services (the
gateway, which starts clusters; the idle culler) and stops them on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import requests

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "hub_config" / "jupyterhub_config.py"
VENV_BIN = Path(sys.executable).parent
PORT_NAMES = (
    "VOXELHUB_HUB_PORT",
    "VOXELHUB_HUB_API_PORT",
    "VOXELHUB_PROXY_API_PORT",
    "VOXELHUB_GATEWAY_PORT",
    "VOXELHUB_GATEWAY_API_PORT",
    "VOXELHUB_DATA_PORT",
    "VOXELHUB_EXCHANGE_PORT",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HubStack:
    """One hub stack with its own state folder and ports.

    Parameters
    ----------
    state
        Folder for the hub's database, secrets, logs and cluster folders (made 0711: users must
        reach their cluster folders below it, but may list nothing; every file in it is 0600).
    store
        The VoxelHub store every kernel opens by default.
    admins, projects
        Hub admin names; ``{project: [member, ...]}`` (hub groups).
    spawner
        ``"system"`` (a unix user per hub user; needs root) or ``"simple"`` (laptop, no isolation).
    tls
        Serve the public port over HTTPS with a self-signed certificate kept in ``state/tls``.
    ports
        Fixed ports by variable name (``VOXELHUB_HUB_PORT`` ...); the others are free ports.
    config
        The hub configuration file (default: this checkout's ``hub_config/jupyterhub_config.py``).
    """

    def __init__(
        self,
        state: str | os.PathLike[str],
        *,
        store: str | os.PathLike[str] | None = None,
        admins: list[str] | tuple[str, ...] = (),
        projects: dict[str, list[str]] | None = None,
        spawner: str = "system",
        tls: bool = True,
        ports: dict[str, int] | None = None,
        extra_env: dict[str, str] | None = None,
        config: str | os.PathLike[str] = CONFIG,
    ) -> None:
        self.state = Path(state).resolve()
        self.state.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state, 0o711)  # passable (cluster folders below), not listable
        self.store = str(store) if store else ""
        self.admins, self.projects = list(admins), dict(projects or {})
        self.spawner, self.tls = spawner, tls
        self.ports = {name: (ports or {}).get(name) or free_port() for name in PORT_NAMES}
        self.extra_env = dict(extra_env or {})
        self.config = Path(config)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.ports['VOXELHUB_HUB_PORT']}"
        self.gateway_health = f"http://127.0.0.1:{self.ports['VOXELHUB_GATEWAY_PORT']}/services/dask-gateway/api/health"
        self.data_url = (
            f"http://127.0.0.1:{self.ports['VOXELHUB_DATA_PORT']}/services/voxelhub-data"
        )
        self.cafile: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.state / "hub.log"
        self._tree: dict[int, psutil.Process] = {}

    @property
    def serves_data(self) -> bool:
        """The hub runs the data service (a store, and a unix user per hub user)."""
        return bool(self.store) and self.spawner == "system"

    @property
    def data_health(self) -> str:
        return self.data_url + "/api/health"

    @property
    def verify(self) -> str | bool:
        """``verify=`` for requests: the self-signed certificate, or True."""
        return self.cafile or True

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOXELHUB_")}
        env.update({k: str(v) for k, v in self.ports.items()})
        env.update(
            VOXELHUB_HUB_STATE=str(self.state),
            VOXELHUB_HUB_SPAWNER=self.spawner,
            VOXELHUB_HUB_ADMINS=",".join(self.admins),
            VOXELHUB_STORE=self.store,
            PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        )
        if self.projects:
            path = self.state / "projects.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:  # who is in which project: root's
                json.dump(self.projects, f, indent=2)
            env["VOXELHUB_HUB_PROJECTS"] = str(path)
        if self.tls:
            sys.path.insert(0, str(REPO / "extensions"))
            from voxelhub_hub.tls import ensure_self_signed

            cert, key = ensure_self_signed(self.state)
            env.update(VOXELHUB_HUB_SSL_CERT=str(cert), VOXELHUB_HUB_SSL_KEY=str(key))
            self.cafile = str(cert)
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 120) -> float:
        """Start the hub; return seconds until the hub API and the gateway answer."""
        env = self.env()
        chp = REPO / ".node" / "node_modules" / ".bin" / "configurable-http-proxy"
        if "VOXELHUB_CHP" not in env and not chp.exists():
            raise FileNotFoundError(
                f"{chp} is missing: run `make hub-deps` (npm install of the proxy)"
            )
        t0 = time.monotonic()
        # the hub's log is root's alone (users' server output goes to their own homes)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        log = os.fdopen(fd, "ab")
        self._log = log
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "jupyterhub"), "-f", str(self.config)],
            cwd=self.state,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches only the demo driver
        )
        while time.monotonic() - t0 < timeout:
            self.remember_processes()  # so stop() finds the proxy even if the hub dies early
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"the hub exited with {self.proc.returncode}; log: {self.tail()}"
                )
            try:
                if (
                    requests.get(self.url + "/hub/api/", verify=self.verify, timeout=3).ok
                    and requests.get(self.gateway_health, timeout=3).ok
                    and (not self.serves_data or requests.get(self.data_health, timeout=3).ok)
                ):
                    self.remember_processes()
                    return time.monotonic() - t0
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"hub or gateway not up after {timeout:.0f} s; log: {self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def processes(self) -> list[psutil.Process]:
        """The hub and everything it started (proxy, services, user servers, kernels, clusters)."""
        if self.proc is None:
            return []
        try:
            hub = psutil.Process(self.proc.pid)
            return [hub, *hub.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def remember_processes(self) -> None:
        """Record the current tree so stop() can find processes that outlive their parent."""
        for p in self.processes():
            self._tree[p.pid] = p

    def alive(self) -> list[psutil.Process]:
        """Recorded processes still running (same PID *and* start time, so no PID reuse)."""
        self.remember_processes()
        return [
            p for p in self._tree.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        ]

    def stop(self, timeout: float = 30) -> list[str]:
        """SIGTERM the hub (it stops servers, services and proxy), then kill stragglers by PID.

        Returns descriptions of processes that had to be killed (empty when all stopped cleanly).
        """
        if self.proc is None:
            return []
        self.remember_processes()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _, alive = psutil.wait_procs(list(self._tree.values()), timeout=15)
        survivors = []
        for p in alive:
            try:
                survivors.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        self._log.close()
        return survivors


def describe(p: Any) -> str:
    try:
        return f"{p.pid} ({p.username()}) {' '.join(p.cmdline())[:120]}"
    except psutil.Error:
        return str(p.pid)
