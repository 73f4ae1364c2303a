"""Backups with restic: a disaster-recovery drill, incremental runs, and a backup killed mid-run."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import voxelhub
from tests.dicom_factory import write_series
from voxelhub import audit
from voxelhub.backup import BackupError, Repository, Retention, Sources
from voxelhub.features import Discretisation, ResultStore, Settings, extract_many
from voxelhub.fsck import check_store
from voxelhub.roi.labels import read_labels, write_labels
from voxelhub.store.location import open_location

pytestmark = pytest.mark.skipif(shutil.which("restic") is None, reason="needs restic (Debian)")

FAST = Settings(
    discretisation=Discretisation("fbs", bin_width=100.0),
    families=("intensity_statistics",),
    aggregations=("3D_avg",),
)


def dump(database: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, sorted, for comparing two databases."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "select name from sqlite_master where type='table' and name not like 'sqlite_%'"
            )
        ]
        return {
            t: sorted(map(tuple, conn.execute(f'select * from "{t}"')), key=repr) for t in tables
        }
    finally:
        conn.close()


def bright(volume: object) -> object:
    return np.asarray(volume) > np.asarray(volume).mean()


def make_site(root: Path) -> tuple[Path, Path]:
    """A store with two volumes, a label image and stored features; a hub state folder with a
    database and an audit log with checkpoints."""
    store, hub = root / "store", root / "hub"
    for i in range(2):
        folder = root / "dicom" / str(i)
        write_series(folder, slices=24, rows=128, columns=128, seed=i, patient_id=f"P{i}")
        report = voxelhub.ingest(folder, store, project="drill", progress=False)
        assert not report.failed
    cat = voxelhub.open_catalog(store)
    rows = cat.series(project="drill")
    uid = rows.iloc[0]["volume_uid"]
    volume = np.asarray(voxelhub.open_series(uid, catalog=cat))
    write_labels(cat, uid, "tumour", (volume > volume.mean()).astype(np.uint8), names={1: "tumour"})
    extract_many(
        rows, roi={"bright": bright}, settings=FAST, catalog=cat, save_to=cat, progress=False
    )
    cat.close()

    (hub / "audit").mkdir(parents=True)
    os.chmod(hub / "audit", 0o700)
    log = audit.AuditLog(hub / "audit" / "audit.log")
    for n in range(5):
        log.record(user="alice", client="k", action="volume.read", decision="allow", volume=f"v{n}")
    log.record(user="eve", client="k", action="volume.read", decision="deny", reason="outsider")
    log.close()
    audit.checkpoint(hub / "audit" / "audit.log", hub / "audit-checkpoints.jsonl")
    db = sqlite3.connect(hub / "jupyterhub.sqlite")
    db.execute("create table users (name text, admin int)")
    db.executemany("insert into users values (?, ?)", [("alice", 0), ("boss", 1)])
    db.commit()
    db.close()
    os.chmod(hub / "jupyterhub.sqlite", 0o600)
    (hub / "jupyterhub.pid").write_text("12345")  # a runtime leftover, not backed up
    return store, hub


def new_repository(folder: Path, password: str = "correct horse battery staple") -> Repository:
    folder.mkdir(parents=True, exist_ok=True)
    secret = folder / "restic-password"
    secret.write_text(password + "\n")
    os.chmod(secret, 0o600)
    repository = Repository(str(folder / "repo"), secret)
    repository.init()
    return repository


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return new_repository(tmp_path / "data-repository")


def test_disaster_recovery_drill(tmp_path: Path, repo: Repository) -> None:
    store, hub = make_site(tmp_path / "site")
    cat = voxelhub.open_catalog(store)
    uids = list(cat.series()["volume_uid"])
    voxels = {u: np.asarray(voxelhub.open_series(u, catalog=cat)) for u in uids}
    label = np.asarray(read_labels(cat, uids[0], "tumour"))
    features = ResultStore(cat).load(FAST).sort_values(["series", "roi", "feature"])
    cat.close()
    catalog_rows = dump(store / "catalog.sqlite")
    hub_rows = dump(hub / "jupyterhub.sqlite")
    audit_bytes = (hub / "audit" / "audit.log").read_bytes()
    modes = {p.relative_to(hub): p.stat().st_mode & 0o777 for p in hub.rglob("*")}

    first = repo.run(Sources(store=store, hub_state=hub))
    assert first.files_new > 0 and first.bytes_added > 0

    shutil.rmtree(tmp_path / "site")  # the machine is lost

    back = repo.restore(tmp_path / "new-site")
    assert back.hub_state is not None
    assert dump(back.store / "catalog.sqlite") == catalog_rows
    assert dump(back.hub_state / "jupyterhub.sqlite") == hub_rows
    assert not (back.hub_state / "jupyterhub.pid").exists()
    assert (back.hub_state / "audit" / "audit.log").read_bytes() == audit_bytes
    result = audit.verify(
        back.hub_state / "audit" / "audit.log", back.hub_state / "audit-checkpoints.jsonl"
    )
    assert result.ok, result
    restored_modes = {
        p.relative_to(back.hub_state): p.stat().st_mode & 0o777 for p in back.hub_state.rglob("*")
    }
    assert {k: v for k, v in restored_modes.items() if k in modes} == {
        k: v for k, v in modes.items() if k.name != "jupyterhub.pid"
    }

    cat = voxelhub.open_catalog(back.store)
    check = check_store(open_location(str(back.store)), cat, verify=True)
    assert check.consistent, check.summary()  # every volume there, every checksum right
    for uid in uids:
        assert np.array_equal(np.asarray(voxelhub.open_series(uid, catalog=cat)), voxels[uid])
    assert np.array_equal(np.asarray(read_labels(cat, uids[0], "tumour")), label)
    again = ResultStore(cat).load(FAST).sort_values(["series", "roi", "feature"])
    assert again.reset_index(drop=True).equals(features.reset_index(drop=True))
    cat.close()

    # new data after the restore: the next backup adds only that
    write_series(tmp_path / "later", slices=6, rows=20, columns=20, seed=9, patient_id="P9")
    voxelhub.ingest(tmp_path / "later", back.store, project="drill", progress=False)
    second = repo.run(Sources(store=back.store, hub_state=back.hub_state))
    store_bytes = sum(p.stat().st_size for p in back.store.rglob("*") if p.is_file())
    assert 0 < second.bytes_added < store_bytes / 2, (second, store_bytes)
    assert len(repo.snapshots()) == 2
    repo.check(read_data=True)


def test_a_backup_killed_mid_run_leaves_the_repository_sound(
    tmp_path: Path, repo: Repository
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    rng = np.random.default_rng(1)
    for n in range(6):  # incompressible data restic needs a while to pack
        (store / f"blob{n}.bin").write_bytes(rng.bytes(24 << 20))
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from voxelhub.backup import Repository, Sources\n"
        "Repository(sys.argv[1], sys.argv[2]).run(Sources(store=Path(sys.argv[3])))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, repo.url, str(repo.password_file), str(store)],
        start_new_session=True,
    )
    restic = None
    deadline = time.monotonic() + 60
    while restic is None and time.monotonic() < deadline:
        restic = next(iter(psutil.Process(proc.pid).children()), None)
        time.sleep(0.05)
    assert restic is not None, "restic did not start"
    time.sleep(1.0)
    assert proc.poll() is None, "the backup finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # restic and its parent, as a crash would
    proc.wait()
    psutil.wait_procs([restic], timeout=30)  # gone, as after a reboot: its lock is stale
    assert repo.snapshots() == []
    repo.run(Sources(store=store))
    repo.check(read_data=True)
    assert len(repo.snapshots()) == 1
    back = repo.restore(tmp_path / "restored")
    for n in range(6):
        name = f"blob{n}.bin"
        assert (back.store / name).read_bytes() == (store / name).read_bytes(), name


def test_restore_refuses_a_folder_that_is_not_empty(tmp_path: Path, repo: Repository) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "something").write_text("x")
    with pytest.raises(BackupError, match="not empty"):
        repo.restore(target)


def test_a_wrong_repository_password_is_a_clear_error(tmp_path: Path, repo: Repository) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    with pytest.raises(BackupError, match="restic snapshots failed"):
        Repository(repo.url, wrong).snapshots()


def test_the_command_line_backs_up_lists_checks_and_restores(tmp_path: Path) -> None:
    store = tmp_path / "store"
    write_series(tmp_path / "dicom", slices=4, rows=16, columns=16, seed=3, patient_id="P3")
    voxelhub.ingest(tmp_path / "dicom", store, project="cli", progress=False)
    password = tmp_path / "pw"
    password.write_text("another long password\n")
    env = {**os.environ, "VOXELHUB_BACKUP_REPO": str(tmp_path / "repo")}
    env["VOXELHUB_BACKUP_PASSWORD_FILE"] = str(password)

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "voxelhub.cli", "backup", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "initialised" in cli("init")
    assert "snapshot" in cli("run", str(store))
    assert len(cli("list").splitlines()) == 1
    assert "no errors" in cli("check")
    assert "restored latest" in cli("restore", "--to", str(tmp_path / "back"))
    assert dump(tmp_path / "back" / "store" / "catalog.sqlite") == dump(store / "catalog.sqlite")
    assert "removed 0 snapshots" in cli("forget", "--keep-last", "1")
    key = tmp_path / "master.key"
    key.write_text("{}")
    os.chmod(key, 0o600)
    keys = ["--repo", str(tmp_path / "keys")]
    cli("init", *keys)
    assert "key snapshot" in cli("keys", *keys, str(key))
    assert f"restored key file {tmp_path / 'keys-back' / 'master.key'}" in cli(
        "restore-keys", *keys, "--to", str(tmp_path / "keys-back")
    )
    env.pop("VOXELHUB_BACKUP_REPO")
    done = subprocess.run(
        [sys.executable, "-m", "voxelhub.cli", "backup", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2 and "give --repo and --password-file" in done.stderr


def test_master_keys_go_to_their_own_repository_never_into_a_data_snapshot(
    tmp_path: Path, repo: Repository
) -> None:
    store = tmp_path / "store"
    write_series(tmp_path / "dicom", slices=4, rows=16, columns=16, seed=5, patient_id="P5")
    voxelhub.ingest(tmp_path / "dicom", store, project="keys", progress=False)
    master = store / "misplaced-master.key"  # a site that put its key file in the store
    master.write_bytes(b'{"keys": {"m1": "not a real key"}, "current": "m1"}')
    os.chmod(master, 0o600)

    repo.run(Sources(store=store, key_files=(master,)))
    listed = repo._restic("ls", "latest")
    assert "catalog.sqlite" in listed and "misplaced-master.key" not in listed

    keys = new_repository(tmp_path / "key-repository", "a different password")
    with pytest.raises(BackupError, match="holds data snapshots"):
        repo.run_keys([master])
    with pytest.raises(BackupError, match="no such key file"):
        keys.run_keys([tmp_path / "nowhere.key"])
    keys.run_keys([master])
    with pytest.raises(BackupError, match="holds key backups"):
        keys.run(Sources(store=store))
    with pytest.raises(BackupError, match="not a key backup"):
        repo.restore_keys(tmp_path / "wrong-kind")

    (back,) = keys.restore_keys(tmp_path / "keys-back")
    assert back.read_bytes() == master.read_bytes()
    assert back.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys-back").stat().st_mode & 0o777 == 0o700


def test_forget_keeps_what_the_retention_policy_says_and_the_rest_is_pruned(
    tmp_path: Path, repo: Repository
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for n in range(4):
        (store / f"day{n}.bin").write_bytes(np.random.default_rng(n).bytes(1 << 16))
        repo.run(Sources(store=store))
    with pytest.raises(BackupError, match="must keep something"):
        repo.forget(Retention(last=0, daily=0, weekly=0, monthly=0))
    assert repo.forget(Retention(last=2, daily=0, weekly=0, monthly=0)) == 2
    assert len(repo.snapshots()) == 2
    repo.check(read_data=True)
    back = repo.restore(tmp_path / "back")
    assert sorted(p.name for p in back.store.iterdir()) == [f"day{n}.bin" for n in range(4)]


def test_a_postgresql_catalog_is_dumped_and_restored_into_an_empty_database(
    tmp_path: Path, repo: Repository, postgres_url: str
) -> None:
    from sqlalchemy import create_engine, text

    store = tmp_path / "store"
    write_series(tmp_path / "dicom", slices=5, rows=16, columns=16, seed=6, patient_id="P6")
    report = voxelhub.ingest(
        tmp_path / "dicom", store, project="pg", catalog_url=postgres_url, progress=False
    )
    assert not report.failed
    before = voxelhub.open_catalog(store, catalog_url=postgres_url).series()
    repo.run(Sources(store=store, catalog_url=postgres_url))

    server = postgres_url.rsplit("/", 1)[0]
    target = f"{server}/{Path(postgres_url).name}_restored"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{Path(target).name}"'))
    try:
        left = repo.restore(tmp_path / "as-file")  # no database given: the dump is kept
        assert (tmp_path / "as-file" / "catalog.pgdump").stat().st_size > 0
        assert left.catalog_url is None
        back = repo.restore(tmp_path / "back", catalog_url=target)
        assert back.catalog_url == target
        after = voxelhub.open_catalog(back.store, catalog_url=target).series()
        assert after.to_dict("records") == before.to_dict("records")
        volume = after.iloc[0]["volume_uid"]
        np.testing.assert_array_equal(
            np.asarray(
                voxelhub.open_series(
                    volume, catalog=voxelhub.open_catalog(back.store, catalog_url=target)
                )
            ),
            np.asarray(
                voxelhub.open_series(
                    volume, catalog=voxelhub.open_catalog(store, catalog_url=postgres_url)
                )
            ),
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{Path(target).name}" WITH (FORCE)'))
        admin.dispose()


def test_a_repository_on_object_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_endpoint: str
) -> None:
    """restic's ``s3:`` backend against the S3 API server the tests already use (moto's)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "voxelhub-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "voxelhub-test-secret")
    password = tmp_path / "pw"
    password.write_text("an object-storage repository password\n")
    repo = Repository(f"s3:{s3_endpoint}/voxelhub-backups/site", password)
    repo.init()  # restic makes the bucket
    store = tmp_path / "store"
    write_series(tmp_path / "dicom", slices=4, rows=16, columns=16, seed=7, patient_id="P7")
    voxelhub.ingest(tmp_path / "dicom", store, project="s3", progress=False)
    snap = repo.run(Sources(store=store))
    assert [s.id for s in repo.snapshots()] == [snap.id]
    repo.check(read_data=True)
    back = repo.restore(tmp_path / "back")
    assert dump(back.store / "catalog.sqlite") == dump(store / "catalog.sqlite")
    check = check_store(
        open_location(str(back.store)), voxelhub.open_catalog(back.store), verify=True
    )
    assert check.consistent, check.summary()
