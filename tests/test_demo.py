"""`make demo`'s script: ingests the shared data, serves JupyterLab on 127.0.0.1, stops on Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.processes import free_port, stop


@pytest.mark.slow
def test_demo_serves_jupyterlab_with_the_sample_notebook(
    tmp_path: Path, shared_dicom: Path
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voxelhub.demo",
            "--shared",
            str(shared_dicom.parents[1]),
            "--state",
            str(tmp_path / "state"),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        token = None
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        for line in proc.stdout:
            match = re.search(r"/lab\?token=(\S+)", line)
            if match:
                token = match.group(1)
                break
            assert time.monotonic() < deadline, "demo did not print its URL in time"
        assert token, "demo exited before printing its URL"
        status = None
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{port}/api/contents?token={token}"
                with urllib.request.urlopen(url, timeout=2) as response:
                    status = json.load(response)
                break
            except OSError:
                time.sleep(0.5)
        assert status is not None, "JupyterLab did not answer"
        names = {item["name"] for item in status["content"]}
        assert "01_explore_a_dataset.ipynb" in names
        with pytest.raises(urllib.error.HTTPError):  # no token, no access
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents", timeout=5)
    finally:
        children = psutil.Process(proc.pid).children(recursive=True)
        stop(proc, signal.SIGINT, timeout=30)
    assert children, "JupyterLab should have run as a child of the demo"
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {alive}"
