"""Re-encryption after a data-key rotation (issue 13): readers never fail, a crash resumes.

Two real series are ingested into an encrypted project (one with a label image); the data key
is rotated and every volume rewritten under the new one while reader threads read volumes,
labels and sealed attributes in a loop; then the old key is retired and everything still reads.
A run SIGKILLed in a subprocess is run again and fsck --verify is clean.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.core.buffer import cpu
from zarr.storage import MemoryStore

from voxelhub import ingest, open_catalog
from voxelhub.roi.labels import read_labels, write_labels
from voxelhub.store.encryption import open_store_keys, use_keys
from voxelhub.store.keys import FileKeyProvider, MissingKey, store_key_ring
from voxelhub.store.reencrypt import (
    KeyInUse,
    Outcome,
    ReencryptionBusy,
    Step,
    _job_tag,
    reencrypt_project,
    retire_old_keys,
    tree_key_ids,
)

SERIES = ("ct_ge_hispeed_gantry_tilt", "mr_enhanced_multiframe")
PROJECT = "trial"


pytestmark = pytest.mark.usefixtures("no_keys_left")  # conftest


@pytest.fixture
def encrypted(tmp_path: Path, shared_dicom: Path) -> tuple[Path, Path]:
    """(store, key file) holding the series, encrypted, with a label on the first volume."""
    key_file = FileKeyProvider.create(tmp_path / "secret" / "master.json").path
    store = tmp_path / "store"
    for name in SERIES:
        report = ingest(
            shared_dicom / name,
            store,
            project=PROJECT,
            encrypt=True,
            key_file=key_file,
            progress=False,
            workers=1,
        )
        assert report.written and not report.failed, report.summary()
    cat = open_catalog(store)
    uid = cat.series().volume_uid.iloc[0]
    volume = np.asarray(cat.open_series(uid))
    write_labels(cat, uid, "bright", volume > np.percentile(volume, 90))
    cat.close()
    return store, key_file


def snapshot(store: Path) -> dict[str, tuple[np.ndarray, np.ndarray | None, list]]:
    """Each volume's voxels, its label (if any) and its sealed acquisition table."""
    cat = open_catalog(store)
    out = {}
    for uid in cat.series(project=PROJECT).volume_uid:
        stored = cat.stored_volume(uid)
        label = np.asarray(read_labels(cat, uid, "bright")) if "bright" in stored.labels else None
        out[str(uid)] = (np.asarray(cat.open_series(uid)), label, stored.acquisition)
    cat.close()
    return out


def test_readers_never_fail_while_a_project_is_reencrypted(encrypted: tuple[Path, Path]) -> None:
    store, key_file = encrypted
    expected = snapshot(store)
    assert len(expected) >= 2
    cat = open_catalog(store)
    ring = open_store_keys(cat.location, key_file)
    old = ring.current(PROJECT)
    has_label = [uid for uid, (_, label, _) in expected.items() if label is not None]
    assert has_label, "the fixture's label must be found through the reader's path"
    new = ring.rotate(PROJECT)
    with pytest.raises(KeyInUse, match=old):
        retire_old_keys(cat, PROJECT, ring)

    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0]

    def reader() -> None:
        mine = open_catalog(store)
        try:
            while not stop.is_set():
                for uid, (voxels, label, acquisition) in expected.items():
                    got = np.asarray(mine.open_series(uid))
                    assert np.array_equal(got, voxels), uid
                    assert mine.stored_volume(uid).acquisition == acquisition
                    if label is not None:
                        assert np.array_equal(np.asarray(read_labels(mine, uid, "bright")), label)
                    reads[0] += 1
        except BaseException as exc:  # every failure is what the test counts
            errors.append(exc)
        finally:
            mine.close()

    def service_reader() -> None:
        """As the data service serves a user without keys: the decrypted view, key by key."""
        from tests.store.test_decrypted_view import view_of

        mine = open_catalog(store)
        try:
            while not stop.is_set():
                for uid, (voxels, label, _) in expected.items():
                    served = view_of(store, mine.stored_volume(uid).store_path)
                    buffers = {k: cpu.Buffer.from_bytes(v) for k, v in served.items()}
                    group = zarr.open_group(MemoryStore(buffers), mode="r", zarr_format=3)
                    assert np.array_equal(group["0"][...], voxels), uid
                    if label is not None:
                        assert np.array_equal(group["labels/bright/0"][...], label)
                    view_reads[0] += 1
        except BaseException as exc:  # every failure is what the test counts
            errors.append(exc)
        finally:
            mine.close()

    view_reads = [0]
    threads = [threading.Thread(target=reader) for _ in range(3)]
    threads.append(threading.Thread(target=service_reader))
    for t in threads:
        t.start()
    steps = []
    # a reader that opened a volume before its switch reads it after (old trees linger)
    opened = {uid: cat.open_series(uid) for uid in expected}
    late_reads = []

    def progress(step: Step) -> None:
        steps.append(step)
        late_reads.append(
            np.array_equal(np.asarray(opened[step.volume_uid]), expected[step.volume_uid][0])
        )

    # old trees stay 10 s after the last switch: longer than one read of a volume takes here
    result = reencrypt_project(cat, PROJECT, ring, progress=progress, linger_seconds=10.0)
    during = reads[0], view_reads[0]
    stop.set()
    for t in threads:
        t.join()
    assert errors == [], errors[:3]
    assert min(during) > 0, during
    assert [s.outcome for s in steps] == [Outcome.REWRITTEN] * len(expected)
    assert late_reads == [True] * len(expected)
    assert len(result.removed) == len(expected)
    for rel in cat.series(project=PROJECT).store_path:
        assert tree_key_ids(cat.location, rel) == {new}

    assert retire_old_keys(cat, PROJECT, ring) == [old]
    assert ring.versions(PROJECT) == [new]
    cat.close()
    # a fresh ring (as a new process would open) has no old key, and reads the same
    use_keys(None)
    fresh = store_key_ring(store, key_file)
    with pytest.raises(MissingKey, match=old):
        fresh.data_key(old)
    use_keys(fresh)
    after = snapshot(store)
    for uid, (voxels, label, acquisition) in expected.items():
        assert np.array_equal(after[uid][0], voxels)
        assert after[uid][2] == acquisition
        if label is not None:
            assert np.array_equal(after[uid][1], label)
    # a second run finds nothing to do
    cat = open_catalog(store)
    again = reencrypt_project(cat, PROJECT, fresh, linger_seconds=0)
    assert again.count(Outcome.ALREADY_CURRENT) == len(expected) and not again.removed
    cat.close()


def test_a_run_killed_midway_completes_when_run_again(encrypted: tuple[Path, Path]) -> None:
    store, key_file = encrypted
    expected = snapshot(store)
    use_keys(None)
    base = [sys.executable, "-m", "voxelhub.cli", "keys"]
    where = ["--store", str(store), "--project", PROJECT, "--key-file", str(key_file)]
    child = subprocess.Popen(
        [*base, "rotate", *where, "--reencrypt", "--linger", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    lines = []
    for line in child.stdout:
        lines.append(line)
        if ": rewritten" in line:
            os.kill(child.pid, signal.SIGKILL)  # one volume switched, the rest not
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, [*lines, child.stderr.read()]  # type: ignore[union-attr]

    cat = open_catalog(store)
    ring = open_store_keys(cat.location, key_file)
    new = ring.current(PROJECT)
    keys_now = [tree_key_ids(cat.location, rel) for rel in cat.series(project=PROJECT).store_path]
    assert {new} in keys_now and any(new not in ids for ids in keys_now), keys_now
    with pytest.raises(KeyInUse):
        retire_old_keys(cat, PROJECT, ring)
    cat.close()
    use_keys(None)

    out = subprocess.run(
        [*base, "reencrypt", *where, "--linger", "0"], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "already current" in out.stdout and ": rewritten" in out.stdout, out.stdout
    out = subprocess.run([*base, "retire", *where], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "retired data key(s): " in out.stdout, out.stdout + out.stderr
    fsck = [sys.executable, "-m", "voxelhub.cli", "fsck", "--store", str(store), "--verify"]
    out = subprocess.run(
        [*fsck, "--key-file", str(key_file)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0 and "0 corrupt" in out.stdout, out.stdout + out.stderr
    assert "0 unlisted tree(s), 0 temporary tree(s)" in out.stdout, out.stdout
    after = snapshot_with_key(store, key_file)
    for uid, (voxels, label, acquisition) in expected.items():
        assert np.array_equal(after[uid][0], voxels)
        assert after[uid][2] == acquisition
        if label is not None:
            assert np.array_equal(after[uid][1], label)


def snapshot_with_key(store: Path, key_file: Path) -> dict[str, tuple]:
    use_keys(store_key_ring(store, key_file))
    return snapshot(store)


def test_one_reencryption_per_project_and_the_current_key_stays(
    encrypted: tuple[Path, Path],
) -> None:
    store, key_file = encrypted
    cat = open_catalog(store)
    ring = open_store_keys(cat.location, key_file)
    current = ring.current(PROJECT)
    with pytest.raises(MissingKey, match="current"):
        ring.retire_data_key(PROJECT, current)
    assert retire_old_keys(cat, PROJECT, ring) == []  # nothing old: nothing to retire
    ring.rotate(PROJECT)
    held = store_key_ring(store, key_file)  # another process's run, as far as locks go
    lock = held.lock(f".{_job_tag(PROJECT)}.lock", wait=False)
    with lock, pytest.raises(ReencryptionBusy, match=PROJECT):
        reencrypt_project(cat, PROJECT, ring, linger_seconds=0)
    assert reencrypt_project(cat, PROJECT, ring, linger_seconds=0).count(Outcome.REWRITTEN) >= 2
    cat.close()
