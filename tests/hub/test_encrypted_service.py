"""Encrypted projects on the real stack: the data service holds the key, users get plaintext.

One hub (system spawner, TLS, the data service under its own account with the master key file
``$VOXELHUB_KEY_FILE``).  A real CT series is ingested twice, into a clear and an encrypted
project; ``alice`` (an analyst of both) reads them through the service with the client code a
kernel uses and gets identical voxels, while as her own unix user she can open neither the key
file nor the store.  Keys rotate under her reads; a flipped bit is an error, never data.

Needs root (unix accounts); a few minutes on 2 cores.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "extensions"))

from voxelhub_hub.client import HubBrowser  # noqa: E402
from voxelhub_hub.data_service import hand_over_key_file, hand_over_store  # noqa: E402
from voxelhub_hub.project_groups import remove_group  # noqa: E402
from voxelhub_hub.stack import HubStack  # noqa: E402
from voxelhub_hub.system_users import (  # noqa: E402
    ensure_account,
    remove_account,
    remove_managed_group_if_unused,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="unix accounts need root"),
]

S = secrets.token_hex(3)
ADMIN, ALICE = f"veadm{S}", f"vea{S}"
CLEAR, SEALED = f"clear{S}", f"sealed{S}"
SERVICE_ACCOUNT = f"vhenc{S}"
GROUPS = {CLEAR: [ALICE], SEALED: [ALICE], f"{SEALED}:analyst": [ALICE]}
SERIES = "ct_ge_hispeed_gantry_tilt"


class Site:
    def __init__(self, stack: HubStack, state: Path, store: Path, key_file: Path) -> None:
        self.stack, self.state, self.store, self.key_file = stack, state, store, key_file
        self.token = self.admin_token = ""
        self.clear_uid = self.sealed_uid = ""
        self.expected: np.ndarray | None = None

    def catalog(self) -> Any:
        import voxelhub

        return voxelhub.open_catalog(self.stack.data_url, storage_options={"token": self.token})


def _ingest(state: Path, source: Path, key_file: Path) -> tuple[Path, str, str, np.ndarray]:
    from voxelhub import ingest, open_catalog
    from voxelhub.store.encryption import use_keys

    store = state / "store"
    for project, encrypt in ((CLEAR, False), (SEALED, True)):
        report = ingest(
            source, store, project=project, encrypt=encrypt, key_file=key_file, progress=False
        )
        assert report.written and not report.failed, report.summary()
    use_keys(None)  # from here on only the service holds keys
    cat = open_catalog(store)
    frame = cat.series()
    clear_uid = frame[frame.project == CLEAR].volume_uid.iloc[0]
    sealed_uid = frame[frame.project == SEALED].volume_uid.iloc[0]
    expected = np.asarray(cat.open_series(clear_uid))
    cat.close()
    return store, clear_uid, sealed_uid, expected


@pytest.fixture(scope="module")
def site(shared_dicom: Path) -> Iterator[Site]:
    from voxelhub.store.keys import FileKeyProvider

    state = Path(tempfile.mkdtemp(prefix="vhencstate-"))
    os.chmod(state, 0o755)
    keys = state / "keys"
    keys.mkdir(mode=0o711)  # the service account passes through, lists nothing
    key_file = FileKeyProvider.create(keys / "master.json").path
    stack = HubStack(
        state,
        admins=[ADMIN],
        projects=GROUPS,
        spawner="system",
        tls=True,
        extra_env={"VOXELHUB_DATA_USER": SERVICE_ACCOUNT, "VOXELHUB_KEY_FILE": str(key_file)},
    )
    try:
        store, clear_uid, sealed_uid, expected = _ingest(state, shared_dicom / SERIES, key_file)
        stack.store = str(store)
        site = Site(stack, state, store, key_file)
        site.clear_uid, site.sealed_uid, site.expected = clear_uid, sealed_uid, expected
        stack.start(timeout=180)
        admin = HubBrowser(stack.url, stack.verify)
        password = secrets.token_urlsafe(18)
        admin.signup(ADMIN, password)
        admin.login(ADMIN, password, next_url="/hub/home")
        for group, members in GROUPS.items():
            admin.api("POST", f"/groups/{group}/users", json={"users": members}, ok=(200, 201))
        body = {"note": "encryption test", "expires_in": 3600}
        site.token = admin.api("POST", f"/users/{ALICE}/tokens", json=body)["token"]
        site.admin_token = admin.api("POST", f"/users/{ADMIN}/tokens", json=body)["token"]
        ensure_account(ALICE)
        yield site
    finally:
        stack.stop()
        for name in (ADMIN, ALICE):
            remove_account(name)
        remove_managed_group_if_unused()
        subprocess.run(["userdel", SERVICE_ACCOUNT], capture_output=True, check=False)
        subprocess.run(["groupdel", SERVICE_ACCOUNT], capture_output=True, check=False)
        for group in GROUPS:
            remove_group(group)
        shutil.rmtree(state, ignore_errors=True)


def test_a_user_reads_an_encrypted_volume_through_the_service(site: Site) -> None:
    from voxelhub.store.encryption import keys_in_use
    from voxelhub.store.keys import MissingKey

    assert keys_in_use() is None  # this process (the user's side) holds no key
    cat = site.catalog()
    sealed = cat.stored_volume(site.sealed_uid)
    clear = cat.stored_volume(site.clear_uid)
    # the sealed attributes come back merged: the same header-derived fields as the clear one
    assert sealed.acquisition == clear.acquisition and sealed.acquisition
    assert len(sealed.source_instance_uids) == len(clear.source_instance_uids) > 0
    assert sealed.checksum == clear.checksum
    volume = cat.open_series(site.sealed_uid)
    assert np.array_equal(np.asarray(volume), site.expected)
    assert np.array_equal(
        np.asarray(volume[5:9, 100:300, 17:400]), site.expected[5:9, 100:300, 17:400]
    )
    coarse = np.asarray(cat.open_series(site.sealed_uid, level=2))
    assert np.array_equal(coarse, np.asarray(cat.open_series(site.clear_uid, level=2)))
    # the same store read directly, as the service's files: ciphertext needing the key
    import zarr

    with pytest.raises((MissingKey, PermissionError)):
        zarr.open_array(str(site.store / sealed.store_path / "0"))[0]


def test_the_service_opens_the_sealed_catalog_columns_for_its_users(
    site: Site, shared_dicom: Path
) -> None:
    """The encrypted project is identifiable: its catalog columns are sealed (issue 13), and the
    service, holding the key, lists, searches and filters them in the clear for alice."""
    import pydicom

    ds = pydicom.dcmread(sorted((shared_dicom / SERIES).glob("*.dcm"))[0], stop_before_pixels=True)
    cat = site.catalog()
    series = cat.series(project=SEALED)
    assert list(series.patient_id) == [ds.PatientID]
    assert list(series.description) == [str(ds.get("SeriesDescription", ""))]
    studies = cat.studies(project=SEALED, text=ds.StudyDescription.lower())
    assert list(studies.description) == [ds.StudyDescription]
    assert list(cat.studies(patient=ds.PatientID, project=SEALED).patient_id) == [ds.PatientID]
    assert cat.series(project=SEALED, text="vhc1").empty  # the ciphertext is never searched
    import sqlite3

    db = sqlite3.connect(f"file:{site.store / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        stored = db.execute(
            "SELECT pa.patient_key, pa.patient_name, s.description, s.accession_number "
            "FROM patients pa JOIN projects pr ON pa.project_id = pr.id "
            "JOIN studies s ON s.patient_id = pa.id WHERE pr.name = ?",
            (SEALED,),
        ).fetchall()
    finally:
        db.close()
    assert stored and all(v.startswith("vhc1.") for row in stored for v in row)


def test_labels_written_through_the_service_are_encrypted(site: Site) -> None:
    from voxelhub.roi.labels import read_labels, write_labels

    cat = site.catalog()
    mask = site.expected > np.percentile(site.expected, 95)
    write_labels(cat, site.sealed_uid, "bright", mask)
    assert np.array_equal(np.asarray(read_labels(cat, site.sealed_uid, "bright")) > 0, mask)
    path = cat.stored_volume(site.sealed_uid).labels_path("bright")
    meta = json.loads((site.store / path / "0" / "zarr.json").read_text())
    inner = meta["codecs"][0]["configuration"]["codecs"]
    assert inner[-1]["name"] == "voxelhub.aes256gcm"


def test_the_user_cannot_open_the_key_file_or_the_store(site: Site) -> None:
    code = (
        "import sys\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        open(p, 'rb').read(1); print('READ', p)\n"
        "    except PermissionError:\n"
        "        print('DENIED', p)\n"
    )
    sealed = site.catalog().stored_volume(site.sealed_uid)
    targets = [site.key_file, site.store / sealed.store_path / "zarr.json"]
    targets += sorted((site.store / ".keys").glob("*.json"))
    python = str(Path(sys.executable).parent.resolve() / "python")
    out = subprocess.run(
        ["runuser", "-u", ALICE, "--", python, "-c", code, *map(str, targets)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.count("DENIED") == len(targets) >= 3, out
    st = os.stat(site.key_file)
    assert oct(st.st_mode & 0o777) == "0o600" and st.st_uid != 0


def test_key_rotation_under_reads_through_the_service(site: Site, shared_dicom: Path) -> None:
    """Readers read the encrypted volume through the service while the master key is rotated
    and retired and the project gets a new data key (a new series sealed with it): 0 errors,
    and the new volume reads through the same running service."""
    from voxelhub import open_catalog
    from voxelhub.store.encryption import use_keys
    from voxelhub.store.keys import FileKeyProvider, KeyRing

    stop = time.monotonic() + 3600
    errors: list[BaseException] = []
    reads = [0]

    def reader() -> None:
        cat = site.catalog()
        while time.monotonic() < stop:
            try:
                got = np.asarray(cat.open_series(site.sealed_uid)[::4])
                assert np.array_equal(got, site.expected[::4])
            except BaseException as exc:
                errors.append(exc)
            reads[0] += 1

    with cf.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(reader) for _ in range(3)]
        time.sleep(2)
        provider = FileKeyProvider(site.key_file)  # root may use the service's key file
        ring = KeyRing(site.store / ".keys", provider)
        old = provider.current_id
        provider.add_master()
        assert ring.rewrap() >= 1
        provider.retire(old)
        old_data_key = ring.current(SEALED)
        assert ring.rotate(SEALED) != old_data_key
        # the rotated files are root's now: to the service's account, as the hub's next start
        hand_over_store(site.store, SERVICE_ACCOUNT)
        hand_over_key_file(site.key_file, site.store, SERVICE_ACCOUNT)
        # a new series ingested as the service's account (visible at once, README), sealed
        # with the new data key while the readers read
        code = (
            "import sys\n"
            "from voxelhub import ingest\n"
            "r = ingest(sys.argv[1], sys.argv[2], project=sys.argv[3], progress=False)\n"
            "print('WRITTEN', *r.written)\n"
            "sys.exit(1 if r.failed or not r.written else 0)\n"
        )
        python = str(Path(sys.executable).parent.resolve() / "python")
        source = shared_dicom / "mr_siemens_transfer_syntaxes"
        env = f"VOXELHUB_KEY_FILE={site.key_file}"
        args = [python, "-c", code, str(source), str(site.store), SEALED]
        out = subprocess.run(
            ["runuser", "-u", SERVICE_ACCOUNT, "--", "env", env, *args],
            capture_output=True,
            text=True,
            cwd="/",
            timeout=600,
        )
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        written = out.stdout.split("WRITTEN", 1)[1].split()
        time.sleep(2)
        stop = time.monotonic()
        for f in futures:
            f.result()
    assert errors == [], errors[:3]
    assert reads[0] >= 6
    new_uid = written[0]
    cat = open_catalog(site.store)
    row = cat.series(uid=new_uid).iloc[0]
    assert row.project == SEALED
    level0 = json.loads((site.store / row.store_path / "0" / "zarr.json").read_text())
    inner = level0["codecs"][0]["configuration"]["codecs"]
    assert inner[-1]["configuration"]["key_id"] == ring.current(SEALED) != old_data_key
    use_keys(ring)
    expected = np.asarray(cat.open_series(new_uid))
    use_keys(None)
    cat.close()
    through = np.asarray(site.catalog().open_series(new_uid))
    assert np.array_equal(through, expected)


def test_a_flipped_bit_is_an_error_through_the_service(site: Site) -> None:
    import requests

    sealed = site.catalog().stored_volume(site.sealed_uid)
    shard = site.store / sealed.store_path / "0" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[64] ^= 0x01
    shard.write_bytes(bytes(raw))
    url = f"{site.stack.data_url}/api/store/{sealed.store_path}/0/c/0/0/0"
    response = requests.get(url, headers={"Authorization": f"token {site.token}"}, timeout=30)
    assert response.status_code == 502, response.text
    assert "failed authentication" in response.json()["message"]
    with pytest.raises(Exception) as caught:
        np.asarray(site.catalog().open_series(site.sealed_uid))
    assert "502" in str(caught.value) or "Bad Gateway" in str(caught.value)


def test_a_key_the_service_does_not_hold_is_a_503_naming_it(site: Site) -> None:
    import requests

    sealed = site.catalog().stored_volume(site.sealed_uid)
    meta_file = site.store / sealed.store_path / "1" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["codecs"][0]["configuration"]["codecs"][-1]["configuration"]["key_id"] = "0123abcd0123abcd"
    meta_file.write_text(json.dumps(meta))
    url = f"{site.stack.data_url}/api/store/{sealed.store_path}/1/c/0/0/0"
    response = requests.get(url, headers={"Authorization": f"token {site.token}"}, timeout=30)
    assert response.status_code == 503, response.text
    assert "0123abcd0123abcd" in response.json()["message"]


def test_a_moved_sealed_catalog_value_is_a_502_naming_the_column(site: Site) -> None:
    """A sealed value copied into another column (a tampered database) fails authentication at
    the service: a 502 naming table and column, never a value, never blamed on the request."""
    import sqlite3

    import requests

    path = site.store / "catalog.sqlite"
    where = (
        "id IN (SELECT v.id FROM volumes v JOIN studies s ON v.study_id = s.id "
        "JOIN patients pa ON s.patient_id = pa.id JOIN projects pr ON pa.project_id = pr.id "
        "WHERE pr.name = ?)"
    )
    db = sqlite3.connect(path)
    try:
        (original,) = db.execute(
            f"SELECT description FROM volumes WHERE {where}", (SEALED,)
        ).fetchone()
        (name,) = db.execute(
            "SELECT pa.patient_name FROM patients pa JOIN projects pr ON pa.project_id = pr.id "
            "WHERE pr.name = ?",
            (SEALED,),
        ).fetchone()
        with db:
            db.execute(f"UPDATE volumes SET description = ? WHERE {where}", (name, SEALED))
        url = f"{site.stack.data_url}/api/series"
        response = requests.get(
            url,
            params={"project": SEALED},
            headers={"Authorization": f"token {site.token}"},
            timeout=30,
        )
        assert response.status_code == 502, response.text
        message = response.json()["message"]
        assert "volumes.description" in message and "failed authentication" in message
    finally:
        with db:
            db.execute(f"UPDATE volumes SET description = ? WHERE {where}", (original, SEALED))
        db.close()
    assert site.sealed_uid in site.catalog().series(project=SEALED).volume_uid.tolist()


def test_the_audit_trail_names_a_sealed_patient_by_blind_index(
    site: Site, shared_dicom: Path
) -> None:
    """The audit log is a file on disk too: alice's reads and patient queries in the sealed
    project are recorded under the patient's blind index, never the ID; an admin finds them by
    the ID, over HTTP (the service holds the key) and with the CLI and the master key file."""
    import pydicom
    import requests

    ds = pydicom.dcmread(sorted((shared_dicom / SERIES).glob("*.dcm"))[0], stop_before_pixels=True)
    cat = site.catalog()
    np.asarray(cat.open_series(site.sealed_uid, level=2))
    assert list(cat.studies(patient=ds.PatientID, project=SEALED).patient_id) == [ds.PatientID]
    headers = {"Authorization": f"token {site.admin_token}"}
    url = f"{site.stack.data_url}/api/audit"
    found = requests.get(url, params={"patient": ds.PatientID}, headers=headers, timeout=30)
    assert found.status_code == 200, found.text
    sealed = [r for r in found.json()["records"] if r["project"] == SEALED]
    reads = [r for r in sealed if r["action"] == "volume.read" and r["user"] == ALICE]
    assert reads and all(r["patient"].startswith("vhb1.") for r in sealed)
    lines = (site.state / "audit" / "audit.log").read_text().splitlines()
    sealed_lines = [line for line in lines if f'"project":"{SEALED}"' in line]
    assert sealed_lines and not any(ds.PatientID in line for line in sealed_lines)
    assert any(reads[0]["patient"] in line for line in sealed_lines)
    # alice's query by patient is among them, its detail holding only the blind index (the
    # same patient in the clear project is named by the ID there)
    assert any('"action":"catalog.studies"' in line for line in sealed_lines)
    cli = subprocess.run(
        [
            str(Path(sys.executable).parent / "voxelhub"),
            "audit",
            "query",
            "--log",
            str(site.state / "audit" / "audit.log"),
            "--patient",
            ds.PatientID,
            "--project",
            SEALED,
            "--store",
            str(site.store),
            "--key-file",
            str(site.key_file),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    records = [json.loads(line) for line in cli.stdout.splitlines()]
    assert {r["action"] for r in records} >= {"volume.read"}
    assert {r["patient"] for r in records} == {reads[0]["patient"]}
