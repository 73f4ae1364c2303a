"""The DICOM edge's supervisor: Orthanc and the arrival worker in a private network namespace.

Run by the hub as a managed service (as root: making a namespace and moving an interface into
it need it), ``python -m voxelhub_dicom -f hub_config/dicom_edge_config.py``, or by a test.  It

1. makes the edge's folder (``state_dir``, the data service account's, 0700) and, at every start,
   a new REST password for Orthanc, written only into 0600 files of that account;
2. makes a network namespace (:mod:`voxelhub_dicom.netns`) with loopback and, when configured,
   the hospital-facing ``interface`` with ``address``: hub users on the host have no route in;
3. starts Orthanc (Debian's ``/usr/sbin/Orthanc``, ``TCP_NODELAY=1``) and the worker
   (:mod:`voxelhub_dicom.worker`) inside it, both as the data service's account;
4. on SIGTERM or SIGINT stops both by PID, then the namespace's holder; if either dies, stops the
   other and exits non-zero.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, Float, Integer, List, Unicode, default, validate
from traitlets.config import Application

from voxelhub_dicom.netns import NetNamespace
from voxelhub_dicom.orthanc import (
    DICOMWEB_PLUGIN,
    ORTHANC,
    lua_filter,
    orthanc_config,
    parse_caller,
)

log = logging.getLogger("voxelhub.dicom")

ORTHANC_USER = "voxelhub-edge"
HTTP_PORT = 8042  # Orthanc's REST API, inside the namespace: nothing else listens there


class DicomEdge(Application):
    """VoxelHub's DICOM edge: C-STORE from a PACS or modality into a project."""

    name = "voxelhub-dicom"
    description = __doc__

    ae_titles = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="Called AE title -> project: what a PACS sends to AE title T is ingested into "
        "project ae_titles[T] (hub group T's project).  Titles are case-sensitive, at most 16 "
        "characters; one project may have several titles.  An AE title not listed here is "
        "refused for every instance.",
    ).tag(config=True)

    callers = Dict(
        key_trait=Unicode(),
        value_trait=List(Unicode()),
        help="Project -> the calling parties allowed to send into it, each 'AETITLE@host' (the "
        "PACS's or modality's own AE title and its IPv4 address as the edge sees it), e.g. "
        "{'lung': ['HOSPPACS@10.20.0.5']}.  A caller listed for no project is refused at "
        "association; a listed caller sending to the AE title of a project it is not listed for "
        "has every instance refused.",
    ).tag(config=True)

    deidentify = Dict(
        key_trait=Unicode(),
        value_trait=Bool(),
        help="Project -> de-identify at arrival (PS3.15 Basic Profile, before anything is "
        "written; voxelhub.ingest).  A project not listed follows its catalog setting (a new "
        "project is created identifiable).  A project never changes setting once it holds data.",
    ).tag(config=True)

    stable_seconds = Integer(
        60,
        help="A study is ingested once no instance of it arrived for this many seconds "
        "(Orthanc's StableAge).",
    ).tag(config=True)

    keep_in_orthanc = Bool(
        False,
        help="Keep studies in Orthanc's own storage after the store holds them (default: "
        "delete them from Orthanc once ingested; a study whose ingest failed is always kept).",
    ).tag(config=True)

    dicom_port = Integer(11112, help="The DICOM port (C-STORE, C-ECHO) inside the namespace.").tag(
        config=True
    )

    called_aet = Unicode(
        "VOXELHUB", help="The AE title Orthanc announces (answers to C-ECHO from callers)."
    ).tag(config=True)

    interface = Unicode(
        "",
        help="Host network interface moved into the edge's namespace: the hospital-facing "
        "network card, or one end of a veth pair.  Without it the edge is reachable from "
        "nothing outside its namespace.",
    ).tag(config=True)

    address = Unicode(
        "", help="The edge's address on `interface` in CIDR form, e.g. '10.20.0.1/24'."
    ).tag(config=True)

    gateway = Unicode("", help="Default route inside the namespace (PACSs on other subnets).").tag(
        config=True
    )

    state_dir = Unicode(
        help="The edge's own folder: Orthanc's storage and index, its configuration with the "
        "REST password, the arrivals database.  Owned by `account`, mode 0700."
    ).tag(config=True)

    @default("state_dir")
    def _state_dir_default(self) -> str:
        return os.environ.get("VOXELHUB_DICOM_STATE", "")

    store = Unicode(help="The store arrivals are ingested into (the data service's).").tag(
        config=True
    )

    @default("store")
    def _store_default(self) -> str:
        return os.environ.get("VOXELHUB_DATA_STORE", "")

    catalog_url = Unicode("", help="Catalog URL; default the store's own SQLite catalog.").tag(
        config=True
    )

    audit_log = Unicode(help="The data service's audit log; every arrival is recorded there.").tag(
        config=True
    )

    @default("audit_log")
    def _audit_log_default(self) -> str:
        return os.environ.get("VOXELHUB_AUDIT_LOG", "")

    account = Unicode(
        help="System account Orthanc and the worker run as: the data service's, which alone "
        "may write the store and the audit log."
    ).tag(config=True)

    @default("account")
    def _account_default(self) -> str:
        return os.environ.get("VOXELHUB_DATA_USER", "voxelhub-data")

    secrets_dir = Unicode(
        help="Per-project de-identification keys ($VOXELHUB_SECRETS_DIR of the worker): the "
        "same folder as other ingests of a de-identified project use, so a patient gets one "
        "pseudonym however their images arrive; readable by `account` only."
    ).tag(config=True)

    @default("secrets_dir")
    def _secrets_dir_default(self) -> str:
        return os.environ.get("VOXELHUB_SECRETS_DIR") or os.path.join(self.state_dir, "secrets")

    orthanc = Unicode(ORTHANC, help="Orthanc's executable (Debian's package `orthanc`).").tag(
        config=True
    )

    dicomweb = Bool(
        True, help="Load the DICOMweb plugin (Debian's `orthanc-dicomweb`) into Orthanc."
    ).tag(config=True)

    poll_seconds = Float(1.0, help="How often the worker asks Orthanc for changes.").tag(
        config=True
    )

    aliases = {"f": "DicomEdge.config_file"}  # noqa: RUF012 - traitlets' convention

    config_file = Unicode("", help="A traitlets configuration file (Python or JSON).").tag(
        config=True
    )

    @validate("ae_titles")
    def _check_titles(self, proposal: Any) -> Any:
        for title in proposal["value"]:
            if not 0 < len(title) <= 16 or "\\" in title or title != title.strip():
                raise ValueError(f"bad AE title {title!r}: 1-16 characters, no backslash")
        return proposal["value"]

    @validate("callers")
    def _check_callers(self, proposal: Any) -> Any:
        for callers in proposal["value"].values():
            for caller in callers:
                parse_caller(caller)
        return proposal["value"]

    # -- paths --
    @property
    def folder(self) -> Path:
        return Path(self.state_dir)

    @property
    def arrivals_path(self) -> Path:
        return self.folder / "arrivals.sqlite"

    @property
    def ready_file(self) -> Path:
        return self.folder / "ready.json"

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)

    # -- run --
    def prepare(self) -> tuple[int, int, Path, Path]:
        """The edge's folder and files; returns the account's uid/gid and the two configs."""
        for what in ("state_dir", "store", "audit_log"):
            if not getattr(self, what):
                raise SystemExit(f"voxelhub-dicom: DicomEdge.{what} is not set")
        if not os.path.exists(self.orthanc):
            raise SystemExit(f"{self.orthanc} is missing: `make install` installs Debian's orthanc")
        if self.dicomweb and not os.path.exists(DICOMWEB_PLUGIN):
            raise SystemExit(f"{DICOMWEB_PLUGIN} is missing: install Debian's orthanc-dicomweb")
        account = pwd.getpwnam(self.account)
        uid, gid = account.pw_uid, account.pw_gid
        folder = self.folder
        for sub in (folder, folder / "orthanc", folder / "work", Path(self.secrets_dir)):
            sub.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chown(sub, uid, gid)
            os.chmod(sub, 0o700)
        for stale in (self.ready_file, folder / "orthanc.log"):
            stale.unlink(missing_ok=True)
        password = secrets.token_urlsafe(32)
        http_port = HTTP_PORT
        projects = sorted(set(self.ae_titles.values()))
        callers = sorted({c for p in projects for c in self.callers.get(p, [])})
        lua = folder / "filter.lua"
        self._write(lua, lua_filter(self.ae_titles, self.callers), uid, gid)
        config = orthanc_config(
            name="voxelhub-edge",
            storage=str(folder / "orthanc"),
            http_port=http_port,
            dicom_port=self.dicom_port,
            user=ORTHANC_USER,
            password=password,
            called_aet=self.called_aet,
            callers=callers,
            lua=str(lua),
            stable_seconds=self.stable_seconds,
            dicomweb=self.dicomweb,
        )
        orthanc_json = folder / "orthanc.json"
        self._write(orthanc_json, json.dumps(config, indent=2), uid, gid)
        worker = {
            "orthanc_url": f"http://127.0.0.1:{http_port}",
            "user": ORTHANC_USER,
            "password": password,
            "store": self.store,
            "catalog_url": self.catalog_url,
            "audit_log": self.audit_log,
            "arrivals": str(self.arrivals_path),
            "workdir": str(folder / "work"),
            "orthanc_log": str(folder / "orthanc.log"),
            "ready_file": str(self.ready_file),
            "ae_titles": dict(self.ae_titles),
            "callers": {p: list(c) for p, c in self.callers.items()},
            "deidentify": dict(self.deidentify),
            "keep_in_orthanc": self.keep_in_orthanc,
            "poll_seconds": self.poll_seconds,
        }
        worker_json = folder / "worker.json"
        self._write(worker_json, json.dumps(worker, indent=2), uid, gid)
        return uid, gid, orthanc_json, worker_json

    @staticmethod
    def _write(path: Path, text: str, uid: int, gid: int) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chown(tmp, uid, gid)
        os.replace(tmp, path)

    def start(self) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s voxelhub-dicom %(message)s")
        uid, gid, orthanc_json, worker_json = self.prepare()
        self.stopping = False
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.netns = NetNamespace()
        self.children: list[subprocess.Popen[bytes]] = []
        code = 0
        try:
            if self.interface:
                self.netns.move_in(self.interface, self.address, self.gateway)
            env = {"TCP_NODELAY": "1", "PATH": "/usr/sbin:/usr/bin:/bin", "LANG": "C.UTF-8"}
            log_path = self.folder / "orthanc.log"
            self.children.append(
                subprocess.Popen(
                    self.netns.command(
                        [self.orthanc, "--verbose", f"--logfile={log_path}", str(orthanc_json)],
                        user=(uid, gid),
                    ),
                    env=env,
                    cwd=self.folder,
                    stdin=subprocess.DEVNULL,
                )
            )
            python_path = os.pathsep.join(
                p
                for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH"))
                if p
            )
            self.children.append(
                subprocess.Popen(
                    self.netns.command(
                        [sys.executable, "-m", "voxelhub_dicom.worker", str(worker_json)],
                        user=(uid, gid),
                    ),
                    env={
                        **env,
                        "PYTHONPATH": python_path,
                        "HOME": str(self.folder),
                        "VOXELHUB_SECRETS_DIR": self.secrets_dir,
                    },
                    cwd=self.folder,
                    stdin=subprocess.DEVNULL,
                )
            )
            log.info(
                "DICOM edge: port %s on %s, AE titles %s, namespace holder %s",
                self.dicom_port,
                self.address or "(namespace only)",
                ", ".join(f"{t} -> {p}" for t, p in sorted(self.ae_titles.items())),
                self.netns.pid,
            )
            while not self.stopping:
                dead = [c for c in self.children if c.poll() is not None]
                if dead:
                    log.error("%s exited with %s", dead[0].pid, dead[0].returncode)
                    code = 1
                    break
                time.sleep(0.2)
        finally:
            self.stop()
        if code:
            raise SystemExit(code)

    def _stop(self, *_: Any) -> None:
        self.stopping = True

    def stop(self, grace: float = 15) -> None:
        """SIGTERM each child by PID (the worker first), SIGKILL after ``grace``; then the
        namespace."""
        for child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.netns.close()
        self.ready_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    app = DicomEdge()
    app.initialize(argv)
    app.start()
