"""DICOM arrival benchmark (issue 11): C-STORE into the edge, and the way to a catalogued volume.

Run from the repository root, as root (network namespaces, the edge's account)::

    .venv/bin/python benchmarks/arrival.py              # 3 runs (about 1 min)
    .venv/bin/python benchmarks/arrival.py --repeat 5

The edge runs as the hub runs it (``python -m voxelhub_dicom -f hub_config/dicom_edge_config.py``)
with a PACS in its own network namespace, joined by a veth pair (:class:`voxelhub_dicom.demo.
DemoPacs`).  Each run sends ``../shared/data/dicom/ct_philips_ingenuity_phantom`` (140 files,
74.5 MB) as a new study (fresh UIDs, so nothing is "already stored") with dcmtk's ``storescu``
(``TCP_NODELAY=1``) and measures

* **C-STORE**: files/s and MB/s of the whole ``storescu`` run (one association);
* **end to end**: seconds from the last instance stored to the volume in the catalog (the arrival
  ``ingested``), with the configured ``stable_seconds`` (2 s here) taken out: the time the edge
  spends fetching, checking, ingesting (de-identified) and deleting from Orthanc;
* beside it, ``voxelhub.ingest`` of the same folder in this process (a folder ingest).

With ``--part pull`` (or ``all``, the default) it also measures ``voxelhub pull``: a second
Orthanc with its DICOMweb plugin, in a network namespace of its own reached over a veth pair,
holds the same series (loaded by STOW-RS); each run pulls the study by a QIDO-RS query
(``StudyInstanceUID``) into a fresh de-identified project with 1 and with 4 WADO-RS streams and
measures

* **fetch**: MB/s of the WADO-RS stage alone (retrieve, check, stage atomically);
* **pull**: MB/s from the query to the catalogued volume (fetch + the normal ingest);
* beside it, a folder ingest of the same files from disk (de-identified, 1 worker) in MB/s.

Results go to ``benchmarks/results/arrival.json`` (median of the runs, and each run; the pull's
under ``"pull"``; a part not run keeps its earlier numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "extensions"))
SHARED = Path(os.environ.get("VOXELHUB_SHARED") or REPO.parent / "shared")
SERIES = SHARED / "data" / "dicom" / "ct_philips_ingenuity_phantom"
STABLE = 2


def _copy(out: Path) -> list[Path]:
    out.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    files = []
    for path in sorted(SERIES.iterdir()):
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            continue  # the licence, provenance and checksum files
        if "PixelData" not in ds:
            continue  # DIRFILE
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(out / f"{path.name}.dcm", enforce_file_format=True)
        files.append(out / f"{path.name}.dcm")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--part", choices=("cstore", "pull", "all"), default="all")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the edge needs a network namespace and its own account")
    out = REPO / "benchmarks" / "results" / "arrival.json"
    result = json.loads(out.read_text()) if out.exists() else {}
    if args.part in ("cstore", "all"):
        result.update(bench_cstore(args.repeat))
    if args.part in ("pull", "all"):
        result["pull"] = bench_pull(args.repeat)
    out.write_text(json.dumps(result, indent=2) + "\n")


ARCHIVE_LINK, ARCHIVE_HOST_IP, ARCHIVE_IP = "vhbpull", "10.232.0.1", "10.232.0.2"


class Archive:
    """A second site's Orthanc + DICOMweb in its own namespace, at ``ARCHIVE_IP:8042``."""

    def __init__(self, base: Path) -> None:
        from voxelhub_dicom.netns import NetNamespace
        from voxelhub_dicom.orthanc import DICOMWEB_PLUGIN, ORTHANC

        subprocess.run(["ip", "link", "del", ARCHIVE_LINK], capture_output=True, check=False)
        self.ns = NetNamespace()
        self.proc: subprocess.Popen[bytes] | None = None
        self.password = secrets.token_urlsafe(12)
        self.url = f"http://{ARCHIVE_IP}:8042/dicom-web"
        inner = ARCHIVE_LINK + "i"
        subprocess.run(
            ["ip", "link", "add", ARCHIVE_LINK, "type", "veth", "peer", "name", inner],
            check=True,
        )
        subprocess.run(["ip", "link", "set", inner, "netns", str(self.ns.pid)], check=True)
        self.ns.run(["ip", "addr", "add", f"{ARCHIVE_IP}/24", "dev", inner])
        self.ns.run(["ip", "link", "set", inner, "up"])
        subprocess.run(
            ["ip", "addr", "add", f"{ARCHIVE_HOST_IP}/24", "dev", ARCHIVE_LINK], check=True
        )
        subprocess.run(["ip", "link", "set", ARCHIVE_LINK, "up"], check=True)
        config = {
            "Name": "bench-archive",
            "StorageDirectory": str(base / "archive"),
            "IndexDirectory": str(base / "archive"),
            "HttpPort": 8042,
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {"bench": self.password},
            "HttpCompressionEnabled": False,
            "DicomServerEnabled": False,
            "SaveJobs": False,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        }
        (base / "archive.json").write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            self.ns.command([ORTHANC, str(base / "archive.json")]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        import requests

        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise SystemExit("the archive's Orthanc did not start")
            try:
                auth = ("bench", self.password)
                if requests.get(self.url + "/studies", auth=auth, timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        self.ns.close()  # the veth pair goes with the namespace


def bench_pull(repeat: int) -> dict[str, object]:
    from dicomweb_client import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    from voxelhub.dicomweb import Credentials, StudyQuery, pull
    from voxelhub.ingest import ingest

    load = os.getloadavg()[0]  # other work on the machine shares its cores
    base = Path(tempfile.mkdtemp(prefix="voxelhub-pull-bench-", dir="/tmp"))
    archive = Archive(base)
    runs = []
    try:
        files = _copy(base / "series")
        mb = sum(f.stat().st_size for f in files) / 1e6
        client = DICOMwebClient(
            archive.url, session=create_session_from_user_pass("bench", archive.password)
        )
        client.store_instances([pydicom.dcmread(f) for f in files])
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        for n in range(repeat):
            run: dict[str, float] = {}
            for workers in (1, 4):
                t = time.monotonic()
                report = pull(
                    archive.url,
                    base / f"pull{n}-{workers}",
                    StudyQuery(study_uid=study),
                    project="bench",
                    deidentify=True,
                    credentials=Credentials("bench", archive.password),
                    workers=workers,
                    staging=base / "staging",
                    ingest_workers=1,
                    progress=False,
                )
                total = time.monotonic() - t
                assert report.exit_code == 0 and report.fetched == len(files), report.summary()
                run[f"fetch_mb_per_s_{workers}_streams"] = round(report.megabytes_per_second, 1)
                run[f"pull_s_{workers}_streams"] = round(total, 2)
                run[f"pull_mb_per_s_{workers}_streams"] = round(mb / total, 1)
            t = time.monotonic()
            ingest(
                files[0].parent,
                base / f"folder{n}",
                project="bench",
                deidentify=True,
                workers=1,
                progress=False,
            )
            folder = time.monotonic() - t
            run["folder_ingest_s"] = round(folder, 2)
            run["folder_ingest_mb_per_s"] = round(mb / folder, 1)
            runs.append(run)
            print(run, flush=True)
    finally:
        archive.close()
        shutil.rmtree(base, ignore_errors=True)
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(json.dumps(median, indent=2))
    return {
        "series": SERIES.name,
        "files": len(files),
        "mb": round(mb, 1),
        "query": "StudyInstanceUID (QIDO-RS), WADO-RS per instance, de-identified project",
        "ingest_workers": 1,
        "cpus": os.cpu_count(),
        "load_average_before": round(load, 2),
        "median": median,
        "runs": runs,
    }


def bench_cstore(repeat: int) -> dict[str, object]:
    from voxelhub_dicom.arrivals import Arrivals
    from voxelhub_dicom.demo import AE_TITLE, CALLER, EDGE_IP, PORT, DemoPacs
    from voxelhub_hub.data_service import ensure_service_account

    from voxelhub.ingest import ingest

    account = f"vhbench{secrets.token_hex(3)}"
    ensure_service_account(account)
    uid, gid = pwd.getpwnam(account).pw_uid, pwd.getpwnam(account).pw_gid
    base = Path(tempfile.mkdtemp(prefix="voxelhub-arrival-", dir="/tmp"))
    os.chmod(base, 0o711)
    store, audit_dir, state = base / "store", base / "audit", base / "edge"
    for folder in (store, audit_dir):
        folder.mkdir(mode=0o700)
        os.chown(folder, uid, gid)
    pacs = DemoPacs(base, "bench")
    settings = json.loads(pacs.settings.read_text())
    settings.update(
        stable_seconds=STABLE,
        poll_seconds=0.2,
        state_dir=str(state),
        store=str(store),
        audit_log=str(audit_dir / "audit.jsonl"),
        account=account,
        secrets_dir=str(base / "secrets"),
    )
    pacs.settings.write_text(json.dumps(settings))
    log = open(base / "edge.log", "wb")  # noqa: SIM115
    edge = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voxelhub_dicom",
            "-f",
            str(REPO / "hub_config" / "dicom_edge_config.py"),
        ],
        env={
            **os.environ,
            "PYTHONPATH": str(REPO / "extensions"),
            "VOXELHUB_DICOM_EDGE": str(pacs.settings),
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    runs = []
    try:
        while not (state / "ready.json").exists():
            if edge.poll() is not None:
                raise SystemExit((base / "edge.log").read_text()[-3000:])
            time.sleep(0.1)
        for n in range(repeat):
            files = _copy(base / f"send{n}")
            mb = sum(f.stat().st_size for f in files) / 1e6
            t0 = time.monotonic()
            done = subprocess.run(
                [
                    "nsenter",
                    f"--net=/proc/{pacs.ns.pid}/ns/net",
                    "--",
                    "storescu",
                    "-aet",
                    CALLER,
                    "-aec",
                    AE_TITLE,
                    EDGE_IP,
                    str(PORT),
                    *map(str, files),
                ],
                env={**os.environ, "TCP_NODELAY": "1"},
                capture_output=True,
                text=True,
                check=True,
            )
            sent = time.monotonic()
            assert "Rejected" not in done.stderr, done.stderr
            while True:
                db = Arrivals(state / "arrivals.sqlite", create=False)
                rows = db.list(["bench"])
                db.close()
                finished = [r for r in rows if r["state"] not in ("receiving", "ingesting")]
                if len(finished) == n + 1:
                    break
                time.sleep(0.05)
            end = time.monotonic()
            assert finished[0]["state"] == "ingested", finished[0]
            t = time.monotonic()
            ingest(
                files[0].parent,
                base / f"folder{n}",
                project="bench",
                deidentify=True,
                workers=1,
                progress=False,
            )
            folder = time.monotonic() - t
            runs.append(
                {
                    "files": len(files),
                    "mb": round(mb, 1),
                    "cstore_s": round(sent - t0, 3),
                    "cstore_files_per_s": round(len(files) / (sent - t0), 1),
                    "cstore_mb_per_s": round(mb / (sent - t0), 1),
                    "end_to_end_s": round(end - sent - STABLE, 2),
                    "folder_ingest_s": round(folder, 2),
                }
            )
            print(runs[-1], flush=True)
    finally:
        if edge.poll() is None:
            edge.send_signal(signal.SIGTERM)
            edge.wait(60)
        log.close()
        pacs.close()
        subprocess.run(["userdel", account], capture_output=True, check=False)
        subprocess.run(["groupdel", account], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
    summary = {
        k: statistics.median(r[k] for r in runs) for k in runs[0] if k not in ("files", "mb")
    }
    result = {
        "series": SERIES.name,
        "files": runs[0]["files"],
        "mb": runs[0]["mb"],
        "stable_seconds_excluded": STABLE,
        "workers": 1,
        "median": summary,
        "runs": runs,
    }
    print(json.dumps(result["median"], indent=2))
    return result


if __name__ == "__main__":
    main()
