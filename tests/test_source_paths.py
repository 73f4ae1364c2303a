"""A de-identified project never stores or prints the names of the folders and files ingested.

Sites name folders after the patient.  Real series from ../shared/data/dicom are copied into a
folder named like one (``DOE^JANE_MRN123456/``), with files named after her, next to a file
that is not DICOM, damaged DICOM files and a file whose pixel data cannot be decoded (so a
volume fails with an exception that names the file).  After a de-identified ingest no part of
those names is anywhere: not in any column of any catalog table, not in any ``zarr.json``, not
in the report, the CLI output or the log.  An identifiable project keeps its paths, and the
project's secret turns a label back into the path (``voxelhub locate``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

import voxelhub
from tests.dicom_factory import write_series
from voxelhub.cli import main
from voxelhub.dicom.deid import Deidentifier
from voxelhub.source_names import WITHHELD, SourceNames, locate

PATIENT_FOLDER = "DOE^JANE_MRN123456"
SECRET_WORDS = ("DOE", "JANE", "MRN123456")
TRANSFER_SYNTAXES = "mr_siemens_transfer_syntaxes"


def _patient_folder(parent: Path, shared_dicom: Path) -> Path:
    """A site's export: real series, a note, damaged files, one undecodable image."""
    root = parent / PATIENT_FOLDER
    series = root / "JANE_DOE_MR_head"
    series.mkdir(parents=True)
    for n in range(1, 9):  # 8 real files, one series each (several transfer syntaxes)
        shutil.copy(shared_dicom / TRANSFER_SYNTAXES / f"{n}.dcm", series / f"DOE_JANE_{n}.dcm")
    # JPEG 2000 whose code stream starts with zeros: the header is fine, decoding fails later
    data = bytearray((shared_dicom / TRANSFER_SYNTAXES / "9.dcm").read_bytes())
    start = data.index(b"\xff\x4f\xff\x51")  # SOC + SIZ markers
    data[start : start + 64] = bytes(64)
    (series / "DOE_JANE_9.dcm").write_bytes(bytes(data))
    (root / "notes_for_JANE_DOE.txt").write_text("MRN123456 scanned twice\n")
    # a DICOM file cut inside its header, and a synthetic series whose pixels are truncated
    head = (shared_dicom / TRANSFER_SYNTAXES / "1.dcm").read_bytes()[:700]
    (series / "DOE_JANE_cut.dcm").write_bytes(head)
    bad = write_series(root / "JANE_DOE_CT", slices=3, seed=4)
    for path in bad.files:
        path.write_bytes(path.read_bytes()[:-100])
        path.rename(path.with_name(f"JANE_{path.name}"))
    return root


def _catalog_text(store: Path) -> str:
    """Every value of every column of every table of the catalog."""
    cat = voxelhub.open_catalog(store)
    parts = []
    with cat.engine.connect() as conn:
        tables = inspect(conn).get_table_names()
        assert {"ingest_reports", "rejected_files", "volumes"} <= set(tables)
        for table in tables:
            for row in conn.execute(text(f'SELECT * FROM "{table}"')).mappings():
                parts.append(json.dumps({k: str(v) for k, v in row.items()}))
    cat.close()
    return "\n".join(parts)


def _zarr_text(store: Path) -> str:
    files = list(store.rglob("zarr.json"))
    assert files
    return "\n".join(p.read_text() for p in files)


def _leaks(text: str, root: Path) -> list[str]:
    words = [*SECRET_WORDS, str(root), root.name]
    words += [p.name for p in root.rglob("*")]
    return sorted({w for w in words if w in text})


@pytest.fixture(scope="module")
def deidentified(tmp_path_factory: pytest.TempPathFactory, shared_dicom: Path):
    """The folder ingested by the CLI into a de-identified project, output and log kept."""
    base = tmp_path_factory.mktemp("paths")
    root = _patient_folder(base / "in", shared_dicom)
    store = base / "store"
    return root, store


def test_deidentified_ingest_stores_and_prints_no_path(
    deidentified, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root, store = deidentified
    caplog.set_level(logging.DEBUG)
    code = main(
        ["-v", "ingest", str(root), "--store", str(store), "--project", "safe", "--deidentify"]
    )
    out, err = capsys.readouterr()
    log_text = "\n".join(r.getMessage() for r in caplog.records)
    assert code == 1, out  # written, with rejected and failed files

    cat = voxelhub.open_catalog(store)
    report = cat.reports().iloc[0]
    rejected = cat.rejected()
    cat.close()
    # what was refused is all there, by label: position, keyed ref, SOP pseudonym if known
    assert bool(report["paths_withheld"])
    assert report["paths"] == [
        "input 1 of 1 (source paths withheld: project safe is de-identified)"
    ]
    assert len(report["non_dicom"]) == 1 and report["non_dicom"][0].startswith("file ")
    n_files = sum(1 for p in root.rglob("*") if p.is_file())
    assert all(f" of {n_files}, ref " in s for s in rejected["source"]), rejected
    assert len(rejected) == 1 + 3 + 1  # the cut file, the truncated series, the failed volume
    assert rejected["source"].str.contains(", SOP 2.25.").sum() >= 4  # UIDs read, pseudonymised
    assert "source paths withheld: project safe is de-identified" in out

    for where, text_ in {
        "catalog": _catalog_text(store),
        "zarr.json": _zarr_text(store),
        "stdout": out,
        "stderr": err,
        "log": log_text,
    }.items():
        assert not _leaks(text_, root), f"{where} names the input: {_leaks(text_, root)}"

    # the decoding failure's message named the file: it is withheld in the stored reason
    failed = rejected[rejected["reason"].str.contains("decode")]
    assert len(failed) == 1, rejected
    assert WITHHELD in failed["reason"].iloc[0]


def test_python_report_holds_labels_only(tmp_path: Path, shared_dicom: Path) -> None:
    root = _patient_folder(tmp_path / "in", shared_dicom)
    report = voxelhub.ingest(
        root, tmp_path / "store", project="p", deidentify=True, workers=2, progress=False
    )
    assert report.paths_withheld and len(report.written) == 8
    dumped = json.dumps(dataclasses.asdict(report)) + report.summary()
    assert not _leaks(dumped, root)
    # the same folder, the same secret: the same labels, which locate turns back into paths
    again = voxelhub.ingest(root, tmp_path / "store2", project="p", deidentify=True, progress=False)
    assert sorted(r["source"] for r in again.rejected_files) == sorted(
        r["source"] for r in report.rejected_files
    )
    labels = [r["source"] for r in report.rejected_files] + report.non_dicom
    labels += [f["sources"] for f in report.failed]
    found = locate([root], "p", labels)
    good = {f"DOE_JANE_{n}.dcm" for n in range(1, 9)}
    refused = {str(p) for p in root.rglob("*") if p.is_file() and p.name not in good}
    assert len(refused) == 1 + 1 + 1 + 3  # note, cut, undecodable, truncated series
    assert {f.path for f in found} == refused
    by_path = {f.path: f for f in found}
    note = by_path[str(root / "notes_for_JANE_DOE.txt")]
    assert report.non_dicom == [f"file {note.position} of {note.total}, ref {note.ref}"]
    # the folder moved elsewhere: references are relative to it, so they still resolve
    moved = shutil.copytree(root, tmp_path / "elsewhere")
    assert len(locate([moved], "p", labels)) == len(found)


def test_identifiable_project_keeps_paths(tmp_path: Path, shared_dicom: Path) -> None:
    root = _patient_folder(tmp_path / "in", shared_dicom)
    report = voxelhub.ingest(root, tmp_path / "store", project="open", progress=False)
    assert not report.paths_withheld
    assert report.paths == [str(root)]
    assert report.non_dicom == [str(root / "notes_for_JANE_DOE.txt")]
    assert str(root / "JANE_DOE_MR_head" / "DOE_JANE_cut.dcm") in {
        r["source"] for r in report.rejected_files
    }
    assert "withheld" not in report.summary()
    stored = _catalog_text(tmp_path / "store")
    assert str(root / "notes_for_JANE_DOE.txt") in stored
    assert "DOE_JANE_9.dcm" in stored  # the failed volume's file


def test_reasons_lose_paths_and_names() -> None:
    deid = Deidentifier(b"k" * 32)
    root = "/data/site/DOE^JANE_MRN123456"
    source = f"{root}/series/IM_JANE_0001.dcm"
    names = SourceNames([root], "p", deid)
    for message in (
        f"FileNotFoundError: [Errno 2] No such file or directory: '{source}'",
        "cannot read IM_JANE_0001.dcm: truncated",
        "bad member DOE^JANE_MRN123456 (tag (0010,0010))",
        "decode failed (file /elsewhere/link/to/it.dcm)",
    ):
        scrubbed = names.reason(message, source)
        assert not any(w in scrubbed for w in ("JANE", "DOE", "MRN", "/")), scrubbed
        assert WITHHELD in scrubbed
    assert names.reason("x (tag (0010,0010))", source) == "x (tag (0010,0010))"
    # identifiable projects keep messages as they are
    assert SourceNames([root], "p").reason(f"at {source}", source) == f"at {source}"
    # zip members are named relative to the archive given
    zipped = SourceNames(["/x/DOE.zip"], "p", deid)
    label = zipped.name("/x/DOE.zip!/JANE/1.dcm")
    assert label == f"file, ref {deid.source_ref('DOE.zip!/JANE/1.dcm')}"


def test_locate_needs_the_project_secret(tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(b"x")
    assert main(["locate", str(tmp_path), "--project", "never-made", "--ref", "0" * 16]) == 2
