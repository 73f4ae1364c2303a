"""DICOM from a PACS into projects (issue 11): dcmtk's storescu → the edge (Orthanc in its own
network namespace) → checked, ingested, removed from Orthanc, audited, listed for curators."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.dicom_net.conftest import DICOM, PORT, Edge
from voxelhub import audit
from voxelhub.catalog import Catalog
from voxelhub.ingest import ingest
from voxelhub.store.location import open_location

pytestmark = [pytest.mark.slow]

SERIES = DICOM / "ct_ge_hispeed_gantry_tilt"


def arrivals(edge: Edge, project: str) -> list[dict[str, Any]]:
    from voxelhub_dicom.arrivals import Arrivals

    db = Arrivals(edge.state / "arrivals.sqlite", create=False)
    try:
        return db.list([project])
    finally:
        db.close()


def wait_for(what: str, probe: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def settled(edge: Edge, project: str, n: int) -> list[dict[str, Any]]:
    """The project's arrivals once ``n`` of them are done."""

    def probe() -> list[dict[str, Any]] | None:
        rows = arrivals(edge, project)
        done = [r for r in rows if r["state"] not in ("receiving", "ingesting")]
        return rows if len(done) >= n else None

    return wait_for(f"{n} arrival(s) in {project}", probe)  # type: ignore[no-any-return]


def audit_records(edge: Edge, **filters: str) -> list[audit.AuditRecord]:
    return list(audit.query(edge.audit_log, **filters))


def orthanc_files(edge: Edge) -> list[Path]:
    """Instances in Orthanc's own storage (attachments live in two levels of hex folders)."""
    root = edge.state / "orthanc"
    return [p for p in root.glob("*/*/*") if p.is_file()]


def series_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def test_storescu_series_lands_in_its_project(edge: Edge, tmp_path: Path) -> None:
    files = series_files(SERIES)
    out = edge.pacs.storescu("PACSA", "VHLUNG", files)
    assert "Association Rejected" not in out, out
    [arrival] = settled(edge, "lung", 1)
    assert arrival["state"] == "ingested", arrival
    assert arrival["instances"] == len(files)
    assert (arrival["calling_aet"], arrival["calling_host"]) == ("PACSA", edge.pacs.ip)
    assert arrival["volumes"], arrival

    # in the project's catalog, voxel-identical to a folder ingest of the same files
    cat = Catalog(open_location(str(edge.store)))
    rows = cat.series(project="lung")
    assert len(rows) == len(arrival["volumes"]) >= 1
    ingest(SERIES, tmp_path / "folder", project="lung", workers=1, progress=False)
    ref = Catalog(open_location(str(tmp_path / "folder")))
    ref_rows = ref.series(project="lung")
    assert len(ref_rows) == len(rows)
    for (_, got), (_, want) in zip(
        rows.sort_values("series_uid").iterrows(),
        ref_rows.sort_values("series_uid").iterrows(),
        strict=True,
    ):
        a = cat.open_series(got).values
        b = ref.open_series(want).values
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.array_equal(a, b)
    cat.close()
    ref.close()

    # gone from Orthanc's storage; the arrival is audited
    wait_for("Orthanc's storage emptied", lambda: not orthanc_files(edge), 30)
    [record] = audit_records(edge, action="dicom.arrival", project="lung")
    assert record.decision == "allow"
    assert record.count == len(files) and record.source == edge.pacs.ip
    assert record.detail["calling_aet"] == "PACSA"


def test_unknown_callers_are_refused_at_association(edge: Edge) -> None:
    files = series_files(SERIES)[:2]
    out = edge.pacs.storescu("INTRUDER", "VHLUNG", files)
    assert "Association Rejected" in out and "Calling AE Title Not Recognized" in out, out
    # a known AE title from another host is refused too (DicomCheckModalityHost)
    good_ip = edge.pacs.ip
    edge.pacs.readdress(good_ip.rsplit(".", 1)[0] + ".77")
    try:
        out = edge.pacs.storescu("PACSA", "VHLUNG", files)
        assert "Association Rejected" in out, out
    finally:
        edge.pacs.readdress(good_ip)

    def refusals() -> list[audit.AuditRecord] | None:
        found = audit_records(edge, action="dicom.associate")
        callers = {(r.detail["calling_aet"], r.source) for r in found}
        want = {("INTRUDER", good_ip), ("PACSA", good_ip.rsplit(".", 1)[0] + ".77")}
        return found if want <= callers else None

    for record in wait_for("association refusals in the audit trail", refusals, 30):
        assert record.decision == "deny" and "not an allowed caller" in record.reason


def test_a_caller_only_reaches_its_own_projects(edge: Edge) -> None:
    """PACSA may send to lung (VHLUNG), not to brain (VHBRAIN) nor to an unknown title: those
    instances are never stored, the refusal is audited and listed (to brain's curators; an
    unknown title's to admins).  Orthanc 1.10.1 answers the sender Success all the same."""
    files = series_files(SERIES)[:2]
    for called in ("VHBRAIN", "NOSUCHTITLE"):
        out = edge.pacs.storescu("PACSA", called, files)
        assert "Association Accepted" in out, out  # a known caller …

    def refusals() -> list[audit.AuditRecord] | None:
        found = audit_records(edge, action="dicom.store")
        titles = {r.detail["called_aet"] for r in found}
        return found if titles >= {"VHBRAIN", "NOSUCHTITLE"} else None

    records = wait_for("C-STORE refusals in the audit trail", refusals, 30)
    reasons = {r.detail["called_aet"]: r.reason for r in records}
    assert "caller not allowed into this project" in reasons["VHBRAIN"]
    assert "unknown AE title" in reasons["NOSUCHTITLE"]
    assert all(r.decision == "deny" and r.source == edge.pacs.ip for r in records)
    assert sum(r.count for r in records) == 2 * len(files)
    [brain] = arrivals(edge, "brain")
    assert (brain["state"], brain["calling_aet"], brain["instances"]) == (
        "refused",
        "PACSA",
        len(files),
    )
    [unknown] = arrivals(edge, "")
    assert unknown["called_aet"] == "NOSUCHTITLE" and unknown["state"] == "refused"
    time.sleep(3)  # longer than stable_seconds: nothing may be ingested
    assert [r["state"] for r in arrivals(edge, "brain")] == ["refused"]
    assert not orthanc_files(edge)


def _study_copy(folder: Path, out: Path) -> list[Path]:
    """The series as a new study (new UIDs), as a PACS would send another patient's."""
    out.mkdir()
    study, series = generate_uid(), generate_uid()
    written = []
    for path in series_files(folder):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID = "EDGE^TEST", "EDGE-0001"
        ds.save_as(out / path.name, enforce_file_format=True)
        written.append(out / path.name)
    return written


def test_truncated_and_non_image_instances_are_rejected_with_a_reason(
    edge: Edge, tmp_path: Path
) -> None:
    files = _study_copy(SERIES, tmp_path / "study")
    # the last slice arrives cut inside its pixel data (what Orthanc stores with Success):
    # a structurally valid file whose pixel data is half of what its header says
    last = max(files, key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
    ds = pydicom.dcmread(last)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(last, enforce_file_format=True)
    truncated_uid = ds.SOPInstanceUID
    # and a non-image object of the same study (a Basic Text SR)
    sr = pydicom.Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    sr.SOPInstanceUID = generate_uid()
    sr.StudyInstanceUID, sr.SeriesInstanceUID = ds.StudyInstanceUID, generate_uid()
    sr.PatientName, sr.PatientID, sr.Modality = ds.PatientName, ds.PatientID, "SR"
    sr.SeriesNumber, sr.InstanceNumber = 99, 1
    sr.ValueType, sr.CompletionFlag, sr.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID, sr.file_meta.MediaStorageSOPInstanceUID = (
        sr.SOPClassUID,
        sr.SOPInstanceUID,
    )
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)

    out = edge.pacs.storescu("PACSB", "VHBRAIN", [*files, tmp_path / "sr.dcm"])
    assert "Association Rejected" not in out, out
    rows = settled(edge, "brain", 2)  # the refused one of the test before, and this one
    [arrival] = [r for r in rows if r["state"] != "refused"]
    assert arrival["state"] == "partial", (arrival, (edge.base / "edge.log").read_text()[-4000:])
    reasons = sorted(r["reason"] for r in arrival["rejected"])
    assert len(reasons) == 2, arrival
    assert reasons[0].startswith("not an image: Basic Text SR Storage"), reasons
    assert reasons[1].startswith("truncated: pixel data holds"), reasons
    assert arrival["volumes"], arrival  # the rest of the series is in the store
    cat = Catalog(open_location(str(edge.store)))
    [row] = cat.series(project="brain").to_dict(orient="records")
    assert row["n_slices"] == len(files) - 1 if "n_slices" in row else True
    # de-identified at arrival: nothing of the patient's name reaches the catalog
    assert "EDGE" not in json.dumps(row, default=str)
    cat.close()
    wait_for("Orthanc's storage emptied", lambda: not orthanc_files(edge), 30)
    denied = audit_records(edge, action="dicom.instance", project="brain")
    assert sorted(r.reason for r in denied) == reasons
    assert truncated_uid not in json.dumps([r.to_dict() for r in denied])
    [record] = audit_records(edge, action="dicom.arrival", project="brain")
    assert record.decision == "allow" and record.detail["rejected"] == 2
    assert record.study is None  # a de-identified project: no source UID in the trail


def test_orthanc_is_out_of_the_hosts_reach(edge: Edge) -> None:
    """The host (where hub users are) has no interface into the edge's namespace and nothing of
    the edge listens on its loopback; from the PACS side the REST API refuses even the right
    password; the credentials are in files of the edge's account alone.  (No packet is sent to
    the edge's address from the host: it is routed nowhere here.)"""
    host_addresses = subprocess.run(
        ["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    assert edge.pacs.edge_ip.rsplit(".", 1)[0] + "." not in host_addresses
    assert edge.pacs.edge_link not in host_addresses
    inside = edge.pacs.run(["ip", "-o", "addr", "show"]).stdout  # the PACS side: its own only
    assert edge.pacs.edge_ip not in inside
    for port in (PORT, 8042):
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.settimeout(3)
            s.connect(("127.0.0.1", port))
    config = json.loads((edge.state / "orthanc.json").read_text())
    [(user, password)] = config["RegisteredUsers"].items()
    probe = (
        "import requests, sys; "
        f"r = requests.get('http://{edge.pacs.edge_ip}:8042/system', auth=tuple(sys.argv[1:3]), timeout=10); "
        "print(r.status_code)"
    )
    for auth in ([user, password], ["x", "y"]):
        done = edge.pacs.run([sys.executable, "-c", probe, *auth])
        assert done.stdout.strip() == "401", done
    for name in ("orthanc.json", "worker.json"):
        st = (edge.state / name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == __import__("pwd").getpwnam(edge.account).pw_uid
    assert stat.S_IMODE(edge.state.stat().st_mode) == 0o700


def test_stopping_the_edge_leaves_nothing(edge: Edge) -> None:
    """Last: SIGTERM to the supervisor stops Orthanc and the worker by PID; the namespace and
    its veth end go with them."""
    tree = [p for p in edge.tree if p.is_running()]
    assert {p.name() for p in tree} >= {"Orthanc", "sleep"}
    holder = next(p for p in tree if p.name() == "sleep")
    edge_ns = os.readlink(f"/proc/{holder.pid}/ns/net")
    edge.proc.send_signal(signal.SIGTERM)
    assert edge.proc.wait(60) == 0
    _gone, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, alive
    link = subprocess.run(["ip", "link", "show", edge.pacs.edge_link], capture_output=True)
    assert link.returncode != 0  # the veth pair was destroyed with the namespace
    still = [
        p.pid for p in psutil.process_iter() if p.pid != os.getpid() and _netns(p.pid) == edge_ns
    ]
    assert not still, still
    shutil.rmtree(edge.state / "work", ignore_errors=True)


def _netns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""
