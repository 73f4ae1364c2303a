"""The DICOM edge's tests: a real Orthanc in the edge's own network namespace, real dcmtk
``storescu`` in a PACS's namespace the test makes, a veth pair between them (addresses in
10.231.0.0/16, which exist only inside these namespaces)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("VOXELHUB_SHARED") or REPO.parent / "shared")
DICOM = SHARED / "data" / "dicom"
sys.path.insert(0, str(REPO / "extensions"))

PORT = 11112


class PacsHost:
    """A PACS's host: its own network namespace, joined to the edge by a veth pair."""

    def __init__(self, subnet: int) -> None:
        token = secrets.token_hex(3)
        self.edge_link, self.link = f"vhe{token}", f"vhp{token}"
        self.edge_ip, self.ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--", "sleep", "infinity"], start_new_session=True
        )
        mine = os.readlink("/proc/self/ns/net")
        for _ in range(500):
            try:
                if os.readlink(f"/proc/{self.holder.pid}/ns/net") != mine:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.01)
        self.ns = f"/proc/{self.holder.pid}/ns/net"
        subprocess.run(
            ["ip", "link", "add", self.edge_link, "type", "veth", "peer", "name", self.link],
            check=True,
        )
        subprocess.run(["ip", "link", "set", self.link, "netns", str(self.holder.pid)], check=True)
        self.run(["ip", "link", "set", "lo", "up"], check=True)
        self.run(["ip", "addr", "add", f"{self.ip}/24", "dev", self.link], check=True)
        self.run(["ip", "link", "set", self.link, "up"], check=True)

    def run(
        self, argv: Sequence[str], *, check: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--net={self.ns}", "--", *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            env={**os.environ, "TCP_NODELAY": "1"},
        )

    def storescu(self, calling: str, called: str, files: Sequence[Path]) -> str:
        """Send with dcmtk's storescu; its output (it exits 0 even when a store failed)."""
        done = self.run(
            ["storescu", "-v", "-aet", calling, "-aec", called, self.edge_ip, str(PORT)]
            + [str(f) for f in files]
        )
        return done.stdout + done.stderr

    def readdress(self, ip: str) -> None:
        """The same host under another address (a caller from the wrong host)."""
        self.run(["ip", "addr", "del", f"{self.ip}/24", "dev", self.link], check=True)
        self.ip = ip
        self.run(["ip", "addr", "add", f"{self.ip}/24", "dev", self.link], check=True)

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.terminate()
            self.holder.wait(10)


@dataclass
class Edge:
    proc: subprocess.Popen[bytes]
    pacs: PacsHost
    base: Path
    store: Path
    state: Path
    audit_log: Path
    account: str
    tree: list[psutil.Process]


def _account() -> str:
    from voxelhub_hub.data_service import ensure_service_account

    name = f"vhdcm{secrets.token_hex(3)}"
    ensure_service_account(name)
    return name


@pytest.fixture(scope="package")
def edge() -> Iterator[Edge]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and the edge's account need root")
    for need in ("/usr/sbin/Orthanc", shutil.which("storescu") or "/usr/bin/storescu"):
        if not os.path.exists(need):
            pytest.fail(f"{need} is missing: `make install` installs orthanc and dcmtk")
    account = _account()
    base = Path(tempfile.mkdtemp(prefix="voxelhub-dicom-", dir="/tmp"))
    os.chmod(base, 0o711)
    import pwd

    uid, gid = pwd.getpwnam(account).pw_uid, pwd.getpwnam(account).pw_gid
    store, audit_dir, state = base / "store", base / "audit", base / "edge"
    for folder in (store, audit_dir):
        folder.mkdir(mode=0o700)
        os.chown(folder, uid, gid)
    pacs = PacsHost(subnet=secrets.randbelow(200) + 20)
    config = {
        "DicomEdge": {
            "ae_titles": {"VHLUNG": "lung", "VHBRAIN": "brain"},
            "callers": {"lung": [f"PACSA@{pacs.ip}"], "brain": [f"PACSB@{pacs.ip}"]},
            "deidentify": {"brain": True},
            "stable_seconds": 2,
            "poll_seconds": 0.3,
            "interface": pacs.edge_link,
            "address": f"{pacs.edge_ip}/24",
            "dicom_port": PORT,
            "state_dir": str(state),
            "store": str(store),
            "audit_log": str(audit_dir / "audit.jsonl"),
            "account": account,
            "secrets_dir": str(base / "secrets"),
        }
    }
    config_file = base / "edge_config.json"
    config_file.write_text(json.dumps(config, indent=2))
    log = open(base / "edge.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxelhub_dicom", "-f", str(config_file)],
        env={**os.environ, "PYTHONPATH": str(REPO / "extensions")},
        cwd=base,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not (state / "ready.json").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the edge did not start (rc {proc.poll()}): "
                    f"{(base / 'edge.log').read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.1)
        tree = psutil.Process(proc.pid).children(recursive=True)
        yield Edge(proc, pacs, base, store, state, audit_dir / "audit.jsonl", account, tree)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        pacs.close()
        subprocess.run(["userdel", account], capture_output=True, check=False)
        subprocess.run(["groupdel", account], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
