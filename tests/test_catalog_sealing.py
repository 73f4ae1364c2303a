"""Sealed catalog columns (issue 13): an encrypted identifiable project's catalog names no one.

Real series from ../shared/data/dicom whose headers carry a patient name, ID, birth date,
accession number and descriptions are ingested into an encrypted, identifiable project; every
byte of the catalog (the SQLite file, or a ``pg_dump`` of the PostgreSQL catalog) is searched for
them, while the catalog API holding the key returns them exactly.  The same search on a clear
ingest finds them, so it can fail.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from voxelhub import ingest, open_catalog
from voxelhub.catalog import Catalog
from voxelhub.catalog_sealing import SEALED_COLUMNS, CorruptValue, key_id_of, sealer
from voxelhub.store.encryption import open_store_keys, use_keys
from voxelhub.store.keys import FileKeyProvider, MissingKey, store_key_ring
from voxelhub.store.location import open_location
from voxelhub.store.reencrypt import reencrypt_project, retire_old_keys

# name stc_test, ID crlab, birth 19800707, study "Research^MCBI_TESTING", series ax_asc_35sl
SIEMENS = "mr_siemens_transfer_syntaxes"
# name, ID and accession ROGERS_20180526, birth 19700101, series "B0 NS"
ENHANCED = "mr_enhanced_multiframe"
# the same patient ID as SIEMENS (crlab), another study
SAME_PATIENT = "mr_siemens_fieldmap_2echo"
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyDescription",
    "SeriesDescription",
)


pytestmark = pytest.mark.usefixtures("no_keys_left")  # conftest: also key_file


def header(folder: Path) -> pydicom.Dataset:
    return pydicom.dcmread(sorted(folder.rglob("*.dcm"))[0], stop_before_pixels=True)


def identifying_values(*folders: Path) -> set[bytes]:
    """The identifying values the scanners wrote (5+ characters: not found by chance)."""
    found = {
        str(pydicom.dcmread(path, stop_before_pixels=True).get(k, "") or "").strip().encode()
        for folder in folders
        for path in sorted(folder.rglob("*.dcm"))
        for k in IDENTIFYING
    }
    found = {v for v in found if len(v) >= 5}
    assert {
        b"stc_test",
        b"crlab",
        b"19800707",
        b"ROGERS_20180526",
        b"19700101",
        b"19931022",
    } <= found
    return found


def catalog_bytes(store: Path) -> bytes:
    """Every byte of the SQLite catalog: the database, its WAL and shared memory."""
    return b"".join(p.read_bytes() for p in sorted(store.glob("catalog.sqlite*")))


def leaks(needles: set[bytes], blob: bytes) -> list[bytes]:
    return sorted(n for n in needles if n in blob)


def ingest_into(store: Path, folder: Path, key_file: Path | None, **kw: object) -> None:
    encrypted = {"encrypt": True, "key_file": key_file} if key_file else {}
    report = ingest(folder, store, project="ident", progress=False, workers=1, **encrypted, **kw)
    assert report.written and not report.failed, report.summary()


def check_opened(cat: Catalog, shared_dicom: Path) -> None:
    """The catalog API with the key returns what the headers say, exactly."""
    people = cat.identities(project="ident").set_index("study_uid")
    for name in (SIEMENS, ENHANCED):
        ds = header(shared_dicom / name)
        row = people.loc[ds.StudyInstanceUID]
        assert row.patient_id == ds.PatientID
        assert row.patient_name == str(ds.PatientName)
        assert row.birth_date == ds.PatientBirthDate
        assert row.accession_number == str(ds.get("AccessionNumber", "") or "")
        assert row.description == str(ds.get("StudyDescription", "") or "")
        series = cat.series(study_uid=ds.StudyInstanceUID)
        assert set(series.description) == {ds.SeriesDescription}
        assert set(series.patient_id) == {ds.PatientID}
        studies = cat.studies(project="ident").set_index("study_uid")
        assert studies.loc[ds.StudyInstanceUID].patient_id == ds.PatientID


def test_the_sqlite_catalog_holds_no_identifier_and_opens_with_the_key(
    tmp_path: Path, shared_dicom: Path, key_file: Path
) -> None:
    needles = identifying_values(shared_dicom / SIEMENS, shared_dicom / ENHANCED)
    clear = tmp_path / "clear"
    for name in (SIEMENS, ENHANCED):
        ingest_into(clear, shared_dicom / name, None)
    open_catalog(clear).close()
    assert leaks(needles, catalog_bytes(clear)) == sorted(needles)  # the search can fail

    store = tmp_path / "sealed"
    for name in (SIEMENS, ENHANCED):
        ingest_into(store, shared_dicom / name, key_file)
    cat = open_catalog(store)
    check_opened(cat, shared_dicom)
    cat.close()
    assert leaks(needles, catalog_bytes(store)) == []

    # search: opened in the key holder; the ciphertext itself never matches
    cat = open_catalog(store)
    assert set(cat.search("ASC_35").series_uid) == {
        header(shared_dicom / SIEMENS).SeriesInstanceUID
    }
    assert len(cat.series(text="MCBI_TEST")) == len(
        cat.series(study_uid=header(shared_dicom / SIEMENS).StudyInstanceUID)
    )
    assert list(cat.studies(text="mcbi").description) == ["Research^MCBI_TESTING"]
    assert (
        cat.series(text="vhc1").empty
        and cat.series(text="B0 N", limit=5).description.eq("B0 NS").all()
    )
    assert set(cat.series(patient="ROGERS_20180526").patient_id) == {"ROGERS_20180526"}

    # without the key, listings hold the values opaque; what needs them names project and key
    key_id = next(iter(cat.sealed_key_ids("ident")))
    use_keys(None)
    listed = cat.series().to_csv() + cat.studies().to_csv()
    assert leaks(needles, listed.encode()) == [] and f"vhc1.{key_id}." in listed
    for read in (
        lambda: cat.identities(project="ident"),
        lambda: cat.search("asc_35"),
        lambda: cat.studies(patient="crlab"),
    ):
        with pytest.raises(MissingKey, match=rf"'ident'.*{key_id}"):
            read()
    # a wrong master key file: loud, with the data key's id
    wrong = FileKeyProvider.create(tmp_path / "other" / "master.json").path
    use_keys(store_key_ring(store, wrong))
    with pytest.raises(MissingKey, match=key_id):
        cat.identities(project="ident")
    cat.close()


def test_a_second_ingest_of_the_patient_finds_its_row_by_blind_index(
    tmp_path: Path, shared_dicom: Path, key_file: Path
) -> None:
    store = tmp_path / "sealed"
    ingest_into(store, shared_dicom / SIEMENS, key_file)
    ingest_into(store, shared_dicom / SAME_PATIENT, key_file)
    cat = open_catalog(store)
    with cat.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT patient_key, patient_key_index FROM patients").all()
    assert len(rows) == 1 and all(key_id_of(v) for v in rows[0])
    studies = cat.studies(patient="crlab")
    assert len(studies) == 2 and set(studies.patient_id) == {"crlab"}
    cat.close()


def test_a_changed_or_moved_sealed_value_is_an_error_never_data(
    tmp_path: Path, shared_dicom: Path, key_file: Path
) -> None:
    store = tmp_path / "sealed"
    ingest_into(store, shared_dicom / SIEMENS, key_file)
    db = sqlite3.connect(store / "catalog.sqlite")
    name, study_text = db.execute(
        "SELECT p.patient_name, s.description FROM patients p JOIN studies s ON s.patient_id = p.id"
    ).fetchone()
    flipped = name[:-3] + ("A" if name[-3] != "A" else "B") + name[-2:]
    cat = open_catalog(store)
    for table, column, value in (
        ("patients", "patient_name", flipped),  # a changed character
        ("patients", "patient_name", study_text),  # a value moved from another column
        ("patients", "patient_name", "stc_test"),  # plaintext slipped in
    ):
        with db:
            db.execute(f"UPDATE {table} SET {column} = ?", (value,))
        with pytest.raises(
            CorruptValue, match=re.escape("patients.patient_name of project 'ident'")
        ):
            cat.identities(project="ident")
    db.close()
    cat.close()


def test_reencrypt_reseals_the_columns_with_readers_on(
    tmp_path: Path, shared_dicom: Path, key_file: Path
) -> None:
    store = tmp_path / "sealed"
    for name in (SIEMENS, ENHANCED):
        ingest_into(store, shared_dicom / name, key_file)
    cat = open_catalog(store)
    ring = open_store_keys(cat.location, key_file)
    old = cat.sealed_key_ids("ident")
    expected = cat.identities(project="ident")
    new = ring.rotate("ident")

    errors: list[BaseException] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                assert cat.identities(project="ident").equals(expected)
                reads += 1
            except BaseException as exc:  # counted, not raised in the thread
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        done = reencrypt_project(cat, "ident", ring, linger_seconds=0)
    finally:
        stop.set()
        thread.join()
    assert errors == [] and reads > 0
    assert done.resealed_rows > 0 and cat.sealed_key_ids("ident") == {new}
    assert retire_old_keys(cat, "ident", ring) == sorted(old)
    assert cat.identities(project="ident").equals(expected)
    check_opened(cat, shared_dicom)
    cat.close()
    # the blind index was rebuilt under the new key: the same patient lands on its row
    ingest_into(store, shared_dicom / SAME_PATIENT, key_file)
    cat = open_catalog(store)
    assert len(cat.studies(patient="crlab")) == 2
    assert cat.sealed_key_ids("ident") == {new}
    cat.close()


def test_the_postgresql_catalog_holds_no_identifier(
    tmp_path: Path, shared_dicom: Path, key_file: Path, postgres_url: str
) -> None:
    needles = identifying_values(shared_dicom / SIEMENS, shared_dicom / ENHANCED)
    store = tmp_path / "sealed"
    for name in (SIEMENS, ENHANCED):
        ingest_into(store, shared_dicom / name, key_file, catalog_url=postgres_url)
    cat = Catalog(open_location(str(store)), postgres_url)
    check_opened(cat, shared_dicom)
    assert set(cat.search("asc_35").description) == {"ax_asc_35sl"}
    cat.close()
    url = make_url(postgres_url).set(drivername="postgresql")
    dump = subprocess.run(
        ["pg_dump", "--no-owner", url.render_as_string(hide_password=False)],
        check=True,
        capture_output=True,
    ).stdout
    assert b"CREATE TABLE" in dump and b"vhc1." in dump
    assert leaks(needles, dump) == []


def test_an_earlier_postgresql_catalog_is_widened_for_sealed_values(
    tmp_path: Path, shared_dicom: Path, key_file: Path, postgres_url: str
) -> None:
    """A catalog made before sealing (VARCHAR(n) columns, no blind index) takes sealed rows."""
    location = open_location(str(tmp_path / "store"))
    Catalog(location, postgres_url).close()
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ux_patients_key_index")
        conn.exec_driver_sql("ALTER TABLE patients DROP COLUMN patient_key_index")
        for table, column, size in (
            ("patients", "patient_key", 128),
            ("patients", "patient_name", 256),
            ("patients", "birth_date", 16),
            ("studies", "accession_number", 64),
        ):
            conn.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE VARCHAR({size})")
    Catalog(location, postgres_url).close()
    with engine.connect() as conn:
        narrow = conn.exec_driver_sql(
            "SELECT column_name FROM information_schema.columns WHERE table_name IN "
            "('patients', 'studies') AND character_maximum_length IS NOT NULL"
        ).scalars()
        assert set(narrow) <= {"sex", "study_uid", "study_date", "patient_key_index"}
    engine.dispose()
    ingest_into(tmp_path / "store", shared_dicom / ENHANCED, key_file, catalog_url=postgres_url)
    cat = Catalog(location, postgres_url)
    assert "19700101" in set(cat.identities().birth_date)
    cat.close()


def test_an_ingest_reports_source_paths_are_sealed_too(
    tmp_path: Path, shared_dicom: Path, key_file: Path
) -> None:
    """A source folder named after the patient (as they often are) stays out of the catalog."""
    source = tmp_path / "Rogers_Jane_19700101"
    source.mkdir()
    for path in sorted((shared_dicom / SIEMENS).rglob("*.dcm")):
        shutil.copy(path, source / path.name)
    (source / "Rogers_Jane_referral.txt").write_text("not DICOM")
    needle = b"Rogers_Jane"
    clear = tmp_path / "clear"
    ingest_into(clear, source, None)
    assert needle in catalog_bytes(clear)  # the search can fail

    store = tmp_path / "sealed"
    ingest_into(store, source, key_file)
    cat = open_catalog(store)
    report = cat.reports().iloc[0]
    assert list(report.paths) == [str(source)]
    assert [Path(p).name for p in report.non_dicom] == ["Rogers_Jane_referral.txt"]
    assert "project_id" not in cat.rejected().columns
    cat.close()
    assert needle not in catalog_bytes(store)
    use_keys(None)  # no keys: the report lists them opaque
    cat = open_catalog(store)
    assert needle.decode() not in cat.reports().to_csv()
    cat.close()


def test_a_catalog_from_before_sealed_columns_is_sealed_by_reencrypt(
    tmp_path: Path, shared_dicom: Path, key_file: Path
) -> None:
    """An encrypted identifiable project whose catalog predates sealed columns (clear values, no
    blind index) is refused with the way out named, and ``reencrypt`` seals it: afterwards no
    byte of the SQLite file (full-text index and free pages included) holds an identifier."""
    needles = identifying_values(shared_dicom / SIEMENS, shared_dicom / ENHANCED)
    store = tmp_path / "sealed"
    for name in (SIEMENS, ENHANCED):
        ingest_into(store, shared_dicom / name, key_file)
    cat = open_catalog(store)
    ring = open_store_keys(cat.location, key_file)
    # make it as an earlier VoxelHub wrote it: every sealed value clear, no blind index
    with cat.session() as s:
        for row, table in cat._sealed_rows(s, "ident"):
            for t, column in SEALED_COLUMNS:
                if t == table:
                    value = sealer("ident", cat.location).unseal_value(
                        t, column, getattr(row, column)
                    )
                    setattr(row, column, value)
            if table == "patients":
                row.patient_key_index = None
    cat.close()
    assert leaks(needles, catalog_bytes(store)) == sorted(needles)  # the search can fail
    cat = open_catalog(store)
    with pytest.raises(CorruptValue, match=r"voxelhub keys reencrypt --project ident"):
        cat.identities(project="ident")
    done = reencrypt_project(cat, "ident", ring, linger_seconds=0)
    assert done.resealed_rows > 0
    check_opened(cat, shared_dicom)
    assert set(cat.search("ASC_35").series_uid) == {
        header(shared_dicom / SIEMENS).SeriesInstanceUID
    }
    cat.close()
    assert leaks(needles, catalog_bytes(store)) == []
