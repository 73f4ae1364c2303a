"""``voxelhub pull`` against a second, real Orthanc with its DICOMweb plugin.

The archive runs in a network namespace of its own (the test's, like the edge's PACS host in
``conftest.py``), reached over a veth pair, with authentication on: the pull is a real client
talking HTTP to a real server across an interface.  It is loaded by STOW-RS with real series
from ``../shared/data/dicom``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.dicom_net.archive import USER, Archive, dicom_files, header, running_archive
from tests.dicom_net.conftest import DICOM, REPO
from voxelhub import audit
from voxelhub.catalog import Catalog
from voxelhub.dicomweb import (
    AuthenticationFailed,
    Credentials,
    EmptyQuery,
    PullBusy,
    PullIncomplete,
    ServerNotFound,
    ServerUnreachable,
    StudyQuery,
    pull,
)
from voxelhub.dicomweb.journal import Journal
from voxelhub.dicomweb.pull import pull_folder
from voxelhub.dicomweb.server import Server
from voxelhub.ingest import ingest
from voxelhub.store.location import open_location

SMALL = DICOM / "mr_ge_mprage_3d_t1"  # 130 instances
LARGE = DICOM / "mr_ge_epi_pepolar"  # 240 instances: long enough to be killed mid-way
pytestmark = pytest.mark.timeout(900)
PULL = (sys.executable, "-m", "voxelhub.cli", "pull")
QUIET = ("--user", USER, "--quiet")


@pytest.fixture(scope="module")
def archive() -> Iterator[Archive]:
    """Orthanc + DICOMweb in its own namespace at 10.231.S.2, the host side at 10.231.S.1."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    # the edge's tests use subnets 20-219, the hub's pull tests 250-254
    with running_archive(220 + secrets.randbelow(30), [SMALL, LARGE]) as archive:
        yield archive


def same_volumes(store: Path, reference: Path, project: str) -> int:
    """Assert both stores hold the same volumes, voxel for voxel; how many."""
    cat, ref = Catalog(open_location(str(store))), Catalog(open_location(str(reference)))
    try:
        rows, ref_rows = cat.series(project=project), ref.series(project=project)
        assert len(rows) == len(ref_rows) >= 1
        for (_, got), (_, want) in zip(
            rows.sort_values("volume_uid").iterrows(),
            ref_rows.sort_values("volume_uid").iterrows(),
            strict=True,
        ):
            assert got["volume_uid"] == want["volume_uid"]
            a, b = cat.open_series(got).values, ref.open_series(want).values
            assert a.shape == b.shape and a.dtype == b.dtype
            assert np.array_equal(a, b)
            ga = cat.stored_volume(got["volume_uid"]).geometry
            gb = ref.stored_volume(want["volume_uid"]).geometry
            assert np.allclose(ga.affine_lps, gb.affine_lps)
        return len(rows)
    finally:
        cat.close()
        ref.close()


def test_pull_by_qido_query_matches_a_folder_ingest(archive: Archive, tmp_path: Path) -> None:
    patient = str(header(dicom_files(SMALL)[0]).PatientID)
    study = str(header(dicom_files(SMALL)[0]).StudyInstanceUID)
    report = pull(
        archive.url,
        tmp_path / "store",
        StudyQuery(patient_id=patient, modality="MR"),
        project="pulled",
        credentials=archive.credentials(),
        workers=4,
        staging=tmp_path / "staging",
        ingest_workers=1,
        progress=False,
        audit_log=tmp_path / "audit.jsonl",
    )
    assert report.exit_code == 0, report.summary()
    assert (report.studies, report.instances) == (1, len(dicom_files(SMALL)))
    [record] = audit.query(tmp_path / "audit.jsonl", action="dicom.pull")
    assert record.decision == "allow" and record.project == "pulled"
    assert record.count == report.instances and record.nbytes == report.nbytes
    assert record.detail["query"] == f"ModalitiesInStudy=MR PatientID={patient}"
    assert report.fetched == report.instances and report.resumed == 0
    assert not report.rejected
    assert report.ingest is not None and report.ingest.files_seen == report.instances
    # the identifiable staged copies are gone once the store holds them
    assert list((tmp_path / "staging").iterdir()) == []

    ingest(SMALL, tmp_path / "folder", project="pulled", workers=1, progress=False)
    same_volumes(tmp_path / "store", tmp_path / "folder", "pulled")
    cat = Catalog(open_location(str(tmp_path / "store")))
    assert set(cat.series(project="pulled")["study_uid"]) == {study}
    cat.close()


def _cli(archive: Archive, store: Path, staging: Path, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "workspace"),
        "VOXELHUB_DICOMWEB_PASSWORD": archive.password,
    }
    return subprocess.Popen(
        [*PULL, archive.url, "--store", str(store), "--staging", str(staging), *QUIET, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _journal_lines(staging: Path) -> int:
    return sum(
        len(p.read_bytes().splitlines()) for p in staging.glob("*/state.jsonl") if p.exists()
    )


def test_a_killed_pull_resumes_and_duplicates_nothing(archive: Archive, tmp_path: Path) -> None:
    store, staging = tmp_path / "store", tmp_path / "staging"
    study = str(header(dicom_files(LARGE)[0]).StudyInstanceUID)
    total = len(dicom_files(LARGE))
    args = ("--study-uid", study, "--project", "resumed", "--workers", "1")
    first = _cli(archive, store, staging, *args)
    deadline = time.monotonic() + 120
    while _journal_lines(staging) < 20:
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline, "the pull staged nothing"
        time.sleep(0.005)
    first.send_signal(signal.SIGKILL)
    first.wait()
    first.stdout.close()  # type: ignore[union-attr]
    staged_before = _journal_lines(staging)
    assert 20 <= staged_before < total, "killed too late to test a resumption"
    # nothing reached the catalog yet: ingest starts only when every instance is staged
    assert (
        not (store / "catalog.sqlite").exists()
        or Catalog(open_location(str(store))).series(project="resumed").empty
    )

    second = _cli(archive, store, staging, *args)
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out
    assert f"{total} instance(s): {total - staged_before} fetched now" in out, out
    assert f"{staged_before} already staged by an earlier run" in out, out
    assert archive.password not in out

    # nothing duplicated: the volumes of a folder ingest of the same files, once each
    ingest(LARGE, tmp_path / "folder", project="resumed", workers=1, progress=False)
    n = same_volumes(store, tmp_path / "folder", "resumed")
    cat = Catalog(open_location(str(store)))
    reports = cat.reports()
    assert len(reports) == 1
    [files_seen] = reports["files_seen"]
    assert files_seen == total
    cat.close()

    # a third run brings the same instances again: the store stays as it is
    third = _cli(archive, store, staging, *args)
    out, _ = third.communicate(timeout=600)
    assert third.returncode == 0, out
    assert "0 volume(s) written" in out and f"{n} unchanged" in out, out
    assert same_volumes(store, tmp_path / "folder", "resumed") == n


def test_truncated_and_non_image_instances_are_rejected(archive: Archive, tmp_path: Path) -> None:
    """A study whose last slice is cut inside its pixel data, plus an SR: both named, neither
    ingested, the rest stored (de-identified, as the project asks)."""
    study, patient = generate_uid(), f"PULL-{secrets.token_hex(4)}"
    series = generate_uid()
    datasets = []
    for path in dicom_files(DICOM / "ct_ge_hispeed_gantry_tilt"):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = study, series, patient
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        datasets.append(ds)
    cut = datasets[-1]
    cut.PixelData = cut.PixelData[: len(cut.PixelData) // 2]
    sr = pydicom.Dataset()
    sr.SOPClassUID, sr.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", generate_uid()
    sr.StudyInstanceUID, sr.SeriesInstanceUID = study, generate_uid()
    sr.PatientID, sr.Modality, sr.SeriesNumber, sr.InstanceNumber = patient, "SR", 99, 1
    sr.ValueType, sr.CompletionFlag, sr.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)  # a Part 10 file, as sent
    archive.stow([*datasets, pydicom.dcmread(tmp_path / "sr.dcm")])

    report = pull(
        archive.url,
        tmp_path / "store",
        StudyQuery(patient_id=patient),
        project="deid",
        deidentify=True,
        credentials=archive.credentials(),
        staging=tmp_path / "staging",
        ingest_workers=1,
        progress=False,
        audit_log=tmp_path / "audit.jsonl",
    )
    assert report.exit_code == 1, report.summary()
    reasons = {r["sop"]: r["reason"] for r in report.rejected}
    assert reasons[str(cut.SOPInstanceUID)].startswith("truncated: pixel data holds"), reasons
    # audited without the query: it names the patient
    [record] = audit.query(tmp_path / "audit.jsonl", action="dicom.pull")
    assert record.decision == "allow" and record.detail["rejected"] == 2
    assert patient not in json.dumps(record.to_dict()) and "query" not in record.detail
    assert reasons[str(sr.SOPInstanceUID)].startswith("not an image: Basic Text SR"), reasons
    assert len(reasons) == 2
    assert report.ingest is not None and report.ingest.files_seen == len(datasets) - 1
    cat = Catalog(open_location(str(tmp_path / "store")))
    rows = cat.series(project="deid")
    assert len(rows) >= 1
    assert patient not in json.dumps(rows.to_dict(orient="records"), default=str)
    assert study not in set(rows["study_uid"])  # de-identified: UIDs replaced
    cat.close()


def test_clear_errors_for_a_bad_server_credentials_or_query(
    archive: Archive, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    some = StudyQuery(modality="MR")
    kw = {"staging": tmp_path / "staging", "progress": False}
    with pytest.raises(ServerUnreachable, match="no answer from"):
        pull(f"http://{archive.host.ip}:1/dicom-web", store, some, **kw)  # type: ignore[arg-type]
    with pytest.raises(AuthenticationFailed, match="HTTP 401"):
        wrong = Credentials(USER, "not-the-password")
        pull(archive.url, store, some, credentials=wrong, audit_log=tmp_path / "a.jsonl", **kw)  # type: ignore[arg-type]
    [denied] = audit.query(tmp_path / "a.jsonl", action="dicom.pull")
    assert (denied.decision, denied.reason) == ("deny", "AuthenticationFailed")
    with pytest.raises(ServerNotFound, match="HTTP 404"):
        root = archive.url.removesuffix("/dicom-web") + "/not-dicom-web"
        pull(root, store, some, credentials=archive.credentials(), **kw)  # type: ignore[arg-type]
    with pytest.raises(EmptyQuery, match=r"no study .* matches PatientID=NOBODY"):
        pull(
            archive.url,
            store,
            StudyQuery(patient_id="NOBODY"),
            credentials=archive.credentials(),
            **kw,  # type: ignore[arg-type]
        )
    assert not store.exists()  # nothing was written anywhere

    # the same pull while another run of it holds its folder: refused, named
    query = StudyQuery(modality="MR")
    folder = pull_folder(tmp_path / "staging", Server(archive.url), query, "default")
    folder.mkdir(parents=True)
    running = Journal(folder)
    try:
        with pytest.raises(PullBusy, match="another run of the same pull"):
            pull(archive.url, store, query, credentials=archive.credentials(), **kw)  # type: ignore[arg-type]
    finally:
        running.close()

    # --list: the studies a query finds, nothing fetched
    small = header(dicom_files(SMALL)[0])
    listed = _cli(archive, store, tmp_path / "staging", "--list", "--patient-id", small.PatientID)
    out, _ = listed.communicate(timeout=120)
    assert listed.returncode == 0, out
    assert str(small.StudyInstanceUID) in out and "1 study(ies)" in out, out
    assert not store.exists()

    # the command line: exit status 2, one line naming the problem, no secret in it
    run = _cli(archive, store, tmp_path / "staging", "--patient-id", "NOBODY")
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 2
    assert out.startswith("voxelhub: error: no study on http://"), out
    assert "Traceback" not in out and archive.password not in out
    bad = subprocess.run(
        [*PULL, archive.url, "--store", str(store), "--modality", "MR", "--user", USER],
        env={
            **os.environ,
            "PYTHONPATH": str(REPO / "workspace"),
            "VOXELHUB_DICOMWEB_PASSWORD": "wrong-secret-xyz",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "HTTP 401" in bad.stderr and "wrong-secret-xyz" not in bad.stderr + bad.stdout


def test_the_notebook_panel_pulls_with_progress(archive: Archive, tmp_path: Path) -> None:
    from voxelhub.dicomweb import pull_panel

    panel = pull_panel(tmp_path / "store", project="panel", url=archive.url,
                       staging=tmp_path / "staging")  # fmt: skip
    panel.user.value, panel.password.value = USER, "wrong"
    panel.modality.value = "MR"
    panel.study_uid.value = str(header(dicom_files(SMALL)[0]).StudyInstanceUID)
    panel.pull_button.click()
    panel.thread.join(120)  # type: ignore[union-attr]
    assert panel.report is None and panel.error.startswith("AuthenticationFailed: ")
    assert "HTTP 401" in panel.status.value and "Traceback" not in panel.status.value
    assert not panel.pull_button.disabled

    panel.password.value = archive.password
    panel.find_button.click()
    assert f"1 study(ies), {len(dicom_files(SMALL))} instance(s)" in panel.status.value
    assert panel.study_uid.value in panel.status.value  # the study, listed
    panel.pull_button.click()
    assert panel.pull_button.disabled  # while it runs
    panel.thread.join(300)  # type: ignore[union-attr]
    assert panel.report is not None and panel.report.exit_code == 0, panel.error
    assert panel.progress.value == panel.progress.max == len(dicom_files(SMALL))
    assert "volume(s) written" in panel.status.value
    assert archive.password not in panel.status.value
    cat = Catalog(open_location(str(tmp_path / "store")))
    assert len(cat.series(project="panel")) >= 1
    cat.close()


def test_a_server_lost_mid_pull_is_resumed_once_it_is_back(
    archive: Archive, tmp_path: Path
) -> None:
    """Orthanc killed while instances are being fetched: the pull fails naming what is missing
    and keeps what it has; with the server back, the same pull fetches the rest."""
    store, staging = tmp_path / "store", tmp_path / "staging"
    query = StudyQuery(study_uid=str(header(dicom_files(LARGE)[0]).StudyInstanceUID))
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(pull(archive.url, store, query, project="lost",
                                credentials=archive.credentials(), workers=1, staging=staging,
                                ingest_workers=1, progress=False))  # fmt: skip
        except Exception as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 120
    while _journal_lines(staging) < 20:
        assert worker.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.005)
    assert archive.proc is not None
    archive.proc.kill()
    archive.proc.wait()
    worker.join(300)
    [failure] = outcome
    assert isinstance(failure, PullIncomplete), failure
    assert "could not be fetched" in str(failure) and "run the same pull again" in str(failure)
    staged = _journal_lines(staging)
    assert 20 <= staged < len(dicom_files(LARGE))
    assert not store.exists() or Catalog(open_location(str(store))).series().empty

    archive.start()
    report = pull(archive.url, store, query, project="lost", credentials=archive.credentials(),
                  staging=staging, ingest_workers=1, progress=False)  # fmt: skip
    assert report.exit_code == 0, report.summary()
    assert report.resumed == staged and report.fetched == len(dicom_files(LARGE)) - staged
    ingest(LARGE, tmp_path / "folder", project="lost", workers=1, progress=False)
    same_volumes(store, tmp_path / "folder", "lost")
