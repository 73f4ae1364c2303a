"""A second site's archive for the pull tests: Orthanc with its DICOMweb plugin in a network
namespace of its own (reached over a veth pair, authentication on), loaded by STOW-RS.

Shared by ``tests/dicom_net/test_pull.py`` (local pulls) and ``tests/hub/test_pull_service.py``
(pulls the data service runs).
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests

from tests.dicom_net.conftest import PacsHost
from voxelhub.dicomweb import Credentials

ORTHANC = "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
HTTP_PORT = 8042
USER = "archive"


@dataclass
class Archive:
    url: str
    password: str
    host: PacsHost
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    def credentials(self) -> Credentials:
        return Credentials(USER, self.password)

    def start(self) -> None:
        """Orthanc in the archive's namespace (its storage kept across restarts)."""
        log = open(self.workdir / "orthanc.log", "ab")  # noqa: SIM115 - the process has it
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={self.host.ns}", "--", ORTHANC, str(self.workdir / "orthanc.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()
        system = self.url.removesuffix("/dicom-web") + "/system"
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"Orthanc did not start: {(self.workdir / 'orthanc.log').read_text()[-2000:]}"
                )
            try:
                if requests.get(system, auth=(USER, self.password), timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stow(self, datasets: list[pydicom.Dataset]) -> None:
        from dicomweb_client import DICOMwebClient
        from dicomweb_client.session_utils import create_session_from_user_pass

        client = DICOMwebClient(
            self.url, session=create_session_from_user_pass(USER, self.password)
        )
        answer = client.store_instances(datasets)
        assert not answer.get("FailedSOPSequence"), answer
        assert len(answer.ReferencedSOPSequence) == len(datasets)


def dicom_files(folder: Path) -> list[Path]:
    """The series' files, without the data set's license, provenance and checksums."""
    skip = {"LICENSE.txt", "PROVENANCE.md", "SHA256SUMS"}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name not in skip)


def header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


@contextmanager
def running_archive(subnet: int, series: Sequence[Path]) -> Iterator[Archive]:
    """Orthanc + DICOMweb in its own namespace at 10.231.<subnet>.2 (the host side at .1),
    holding ``series`` (folders of DICOM files); stopped and removed on exit."""
    for need in (ORTHANC, PLUGIN):
        if not Path(need).exists():
            pytest.fail(f"{need} is missing: `make install` installs orthanc-dicomweb")
    host = PacsHost(subnet=subnet)
    workdir = Path(tempfile.mkdtemp(prefix="vh-archive-"))
    password = secrets.token_urlsafe(12)
    archive = Archive(f"http://{host.ip}:{HTTP_PORT}/dicom-web", password, host, workdir)
    try:
        subprocess.run(
            ["ip", "addr", "add", f"{host.edge_ip}/24", "dev", host.edge_link], check=True
        )
        subprocess.run(["ip", "link", "set", host.edge_link, "up"], check=True)
        config = {
            "Name": "second-site-archive",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "storage"),
            "HttpPort": HTTP_PORT,
            "RemoteAccessAllowed": True,  # a remote archive: clients come over the network
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: password},
            "HttpCompressionEnabled": False,
            "DicomServerEnabled": False,
            "SaveJobs": False,
            "HttpThreadsCount": 10,
            "Plugins": [PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        }
        (workdir / "orthanc.json").write_text(json.dumps(config))
        archive.start()
        for folder in series:
            archive.stow([pydicom.dcmread(p) for p in dicom_files(folder)])
        yield archive
    finally:
        archive.stop()
        host.close()  # the veth goes with the namespace
        shutil.rmtree(workdir, ignore_errors=True)
