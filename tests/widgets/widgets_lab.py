"""Drive JupyterLab 4 in Debian's headless Chromium (Playwright) for the widget browser tests
and ``benchmarks/viewer.py``; recipe from ``../shared/notes/viewers.md``.

The server runs on a free loopback port in a throwaway root, with its own settings, workspaces
and runtime folders, and is stopped by PID (SIGINT, SIGTERM, SIGKILL, each with a timeout).
Every page records console errors, page errors, failed requests and every request to a URL that
is not the local server: the offline guard.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "test"
IGNORED_CONSOLE = ("GPU stall due to ReadPixels",)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class JupyterLab:
    """A JupyterLab server in ``root`` (notebooks are written there)."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.root.parent / f"jupyterlab-{self.port}.log"

    def start(self, timeout: float = 90.0) -> JupyterLab:
        state = self.root.parent / f"lab-state-{self.port}"
        settings = state / "settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True, exist_ok=True)
        (settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )
        env = {
            **os.environ,
            "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
            "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
            "JUPYTER_CONFIG_DIR": str(state / "config"),
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            **self.env,
        }
        cmd = [
            str(Path(sys.executable).with_name("jupyter")),
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            f"--ServerApp.token={TOKEN}",
            "--ServerApp.password=",
            "--LabApp.expose_app_in_browser=True",
            f"--ServerApp.root_dir={self.root}",
            "--ServerApp.port_retries=0",
        ]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}/lab?token={TOKEN}", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"jupyter lab did not answer in {timeout} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGINT, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            if proc.poll() is not None:
                break
            proc.send_signal(sig)
            if sig == signal.SIGINT:  # jupyter asks for confirmation; a second SIGINT skips it
                time.sleep(0.2)
                if proc.poll() is None:
                    proc.send_signal(sig)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        self.log.close()

    def write_notebook(self, name: str, cells: list[str]) -> str:
        nb = {
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": {
                "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
            },
            "cells": [
                {
                    "cell_type": "code",
                    "id": f"c{i}",
                    "metadata": {},
                    "source": src,
                    "outputs": [],
                    "execution_count": None,
                }
                for i, src in enumerate(cells)
            ],
        }
        (self.root / name).write_text(json.dumps(nb))
        return name


@dataclass
class Guard:
    """What a page did that an offline, error-free widget must not do."""

    base: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        def on_console(msg: Any) -> None:
            if msg.type == "error" and not any(s in msg.text for s in IGNORED_CONSOLE):
                self.console_errors.append(msg.text)

        def on_request(req: Any) -> None:
            if not req.url.startswith((self.base + "/", "data:", "blob:")):
                self.external.append(req.url)

        def on_failed(req: Any) -> None:
            # the kernel's websocket and aborted long polls end as failures on page close
            if not req.url.startswith(("data:", "blob:")) and "/api/events" not in req.url:
                self.failed.append(f"{req.url} {req.failure}")

        page.on("console", on_console)
        page.on("pageerror", lambda err: self.page_errors.append(str(err)))
        page.on("request", on_request)
        page.on("requestfailed", on_failed)

    def check(self) -> None:
        assert not self.external, f"requests to hosts other than {self.base}: {self.external}"
        assert not self.page_errors, f"page errors: {self.page_errors}"
        assert not self.console_errors, f"console errors: {self.console_errors}"
        assert not self.failed, f"failed requests: {self.failed}"


def open_and_run(page: Any, lab: JupyterLab, notebook: str, timeout_ms: int = 90_000) -> None:
    """Open ``notebook`` in a fresh workspace, wait for an idle kernel, run all cells."""
    workspace = f"ws{time.monotonic_ns()}"
    page.goto(f"{lab.base}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={TOKEN}")
    page.wait_for_function(
        "() => !!window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell')",
        timeout=timeout_ms,
    )
    page.wait_for_function(
        """() => {
          const w = window.jupyterapp.shell.currentWidget;
          const k = w && w.sessionContext && w.sessionContext.session
            && w.sessionContext.session.kernel;
          return !!k && k.status === 'idle';
        }""",
        timeout=timeout_ms,
    )
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")


def picture_stats(png: bytes) -> tuple[int, int]:
    """(number of distinct grey levels, max - min) of a screenshot."""
    import io

    import numpy as np
    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    return len(np.unique(grey)), int(grey.max()) - int(grey.min())


def changed_fraction(a: bytes, b: bytes) -> float:
    """Fraction of pixels that differ between two same-sized screenshots."""
    import io

    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), dtype=np.int16)
    y = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        return 1.0
    return float((np.abs(x - y).max(axis=-1) > 8).mean())
