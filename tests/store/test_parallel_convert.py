"""Volumes converted in worker processes, pixels read at their indexed offset, and the
verification that reads back the stored files.

- With several volumes and workers, each volume is converted in a worker process; the parent
  commits catalog rows in plan order.  A worker that dies takes only its own volume down.
- Native pixels are read where the header index found Pixel Data (no second header parse),
  with the same values as pydicom, and a stale offset falls back to parsing the file.
- The files of a written tree are hashed as zarr writes them and compared with what is read
  back; a changed byte is found and named.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import zarr
from pydicom.uid import ImplicitVRLittleEndian

import voxelhub
from tests.dicom_factory import write_series
from voxelhub.dicom.index import index, read_frames
from voxelhub.dicom.pixels import _fast_path, decode_frame
from voxelhub.errors import StoreError
from voxelhub.store.location import open_location
from voxelhub.store.writer import _HashingStore, _verify, content_checksum


def _three_series(root: Path) -> list[str]:
    uids = []
    for k in range(3):
        uid = f"1.2.826.0.1.3680043.8.498.77.{k + 1}"
        write_series(root / f"s{k}", slices=6 + k, rows=16, columns=20, series_uid=uid, seed=k)
        uids.append(uid)
    return uids


def _rows(store: Path) -> list[dict]:
    cat = voxelhub.open_catalog(store)
    try:
        return cat.series().to_dict("records")
    finally:
        cat.close()


def test_volumes_converted_in_workers_equal_the_one_process_result(tmp_path: Path) -> None:
    _three_series(tmp_path / "in")
    one = voxelhub.ingest(tmp_path / "in", tmp_path / "one", workers=1, progress=False)
    two = voxelhub.ingest(tmp_path / "in", tmp_path / "two", workers=2, progress=False)
    assert len(one.written) == len(two.written) == 3, two.summary()
    assert one.written == two.written  # plan order, whichever worker finished first
    by_uid = {r["volume_uid"]: r for r in _rows(tmp_path / "one")}
    for row in _rows(tmp_path / "two"):
        ref = by_uid[row["volume_uid"]]
        assert row["checksum"] == ref["checksum"] and row["slices"] == ref["slices"]
        assert row["description"] == ref["description"] == "synthetic series"
        group = zarr.open_group(str(tmp_path / "two" / row["store_path"]), mode="r")
        assert content_checksum(group["0"]) == row["checksum"]
    again = voxelhub.ingest(tmp_path / "in", tmp_path / "two", workers=2, progress=False)
    assert sorted(again.unchanged) == sorted(two.written) and not again.written


_KILL_ONE_WORKER = """
import json, os, signal, sys
import voxelhub
import voxelhub.store.writer as writer

_write = writer.write_volume
def write_volume(location, rel, plan, **kwargs):
    if plan.series_instance_uid == sys.argv[3]:
        os.kill(os.getpid(), signal.SIGKILL)  # as a codec segfault or the OOM killer would
    return _write(location, rel, plan, **kwargs)
writer.write_volume = write_volume

report = voxelhub.ingest(sys.argv[1], sys.argv[2], workers=2, progress=False)
print(json.dumps({"written": len(report.written), "failed": report.failed,
                  "exit_code": report.exit_code}))
"""


def test_a_worker_that_dies_fails_its_own_volume_only(tmp_path: Path) -> None:
    uids = _three_series(tmp_path / "in")
    store = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, "-c", _KILL_ONE_WORKER, str(tmp_path / "in"), str(store), uids[1]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["written"] == 2 and out["exit_code"] == 1
    (failed,) = out["failed"]
    assert failed["series_uid"] == uids[1]
    assert "process converting this volume died" in failed["reason"]
    rows = _rows(store)
    assert sorted(r["series_uid"] for r in rows) == [uids[0], uids[2]]
    # what the dead worker left is a temporary tree at most: no committed tree without a row
    committed = {p.relative_to(store).as_posix() for p in store.glob("projects/*/*/*.ome.zarr")}
    assert committed == {r["store_path"] for r in rows}


@pytest.mark.parametrize("implicit", [False, True])
def test_pixels_read_at_the_indexed_offset_equal_pydicom(tmp_path: Path, implicit: bool) -> None:
    write_series(tmp_path / "in", slices=3, rows=12, columns=10, modality="MR")
    paths = sorted((tmp_path / "in").iterdir())
    if implicit:
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            ds.save_as(path, enforce_file_format=True)
    for path in paths:
        (frame,) = read_frames(str(path)).frames
        assert frame.pixel_offset is not None
        expected = pydicom.dcmread(path).pixel_array
        np.testing.assert_array_equal(decode_frame(frame), expected)


@pytest.mark.parametrize("signed", [False, True])
def test_pixels_with_unused_high_bits_read_at_the_offset_equal_pydicom(
    tmp_path: Path, signed: bool
) -> None:
    """Bits Stored 12 of 16 (most CT): garbage in the top 4 bits is cleared, or sign-extended
    when signed, as pydicom does; read at the offset, not through a second parse."""
    write_series(tmp_path / "in", slices=2, rows=12, columns=10, modality="CT")
    rng = np.random.default_rng(3)
    for path in sorted((tmp_path / "in").iterdir()):
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, int(signed)
        raw = rng.integers(0, 1 << 16, size=(12, 10), dtype=np.uint16)  # high bits set too
        ds.PixelData = raw.tobytes()
        ds.save_as(path, enforce_file_format=True)
        (frame,) = read_frames(str(path)).frames
        assert frame.pixel_offset is not None and _fast_path(frame)
        expected = pydicom.dcmread(path).pixel_array
        got = decode_frame(frame)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
        assert (got < 0).any() == signed


def test_a_stale_pixel_offset_falls_back_to_parsing_the_file(tmp_path: Path) -> None:
    write_series(tmp_path / "in", slices=1, rows=12, columns=10, modality="MR")
    (path,) = (tmp_path / "in").iterdir()
    (frame,) = index([tmp_path / "in"], workers=1, progress=False).frames
    # the file was rewritten after indexing: a longer header moves Pixel Data
    ds = pydicom.dcmread(path)
    ds.StudyDescription = "a much longer study description than before"
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(decode_frame(frame), ds.pixel_array)


def test_verification_finds_a_changed_byte_in_a_stored_file(tmp_path: Path) -> None:
    location = open_location(tmp_path / "store")
    location.ensure_root()
    store = _HashingStore(location.zarr_store("vol"))
    group = zarr.open_group(store, mode="w-", zarr_format=3)
    arr = group.create_array("0", shape=(8, 8), chunks=(4, 8), dtype="<u2")
    arr[...] = np.arange(64, dtype="<u2").reshape(8, 8)
    assert "0/c/0/0" in store.written and "0/zarr.json" in store.written
    _verify(location, "vol", store.written)  # untouched: passes

    chunk = tmp_path / "store" / "vol" / "0" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0x01
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="0/c/1/0"):
        _verify(location, "vol", store.written)
    chunk.unlink()
    with pytest.raises(StoreError, match="missing"):
        _verify(location, "vol", store.written)


_SLAB_SPY = """
import json, os, signal, sys
import voxelhub
import voxelhub.store.writer as writer

_write_slab = writer._write_slab_in_worker
def spy(t, start, stop, *slot):
    with open(os.path.join(sys.argv[3], f"{os.getpid()}-{start}"), "w"):
        pass
    if sys.argv[4] == "kill" and start == 64:
        os.kill(os.getpid(), signal.SIGKILL)  # as a codec segfault or the OOM killer would
    return _write_slab(t, start, stop, *slot)
writer._write_slab_in_worker = spy  # forked pool processes inherit it

report = voxelhub.ingest(sys.argv[1], sys.argv[2], workers=2, progress=False)
print(json.dumps({"pid": os.getpid(), "written": len(report.written), "failed": report.failed,
                  "exit_code": report.exit_code}))
"""


def _ingest_with_slab_spy(tmp_path: Path, store: Path, mode: str) -> tuple[dict, list[str]]:
    calls = tmp_path / f"calls-{mode}"
    calls.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _SLAB_SPY, str(tmp_path / "in"), str(store), str(calls), mode],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), sorted(p.name for p in calls.iterdir())


def test_one_volume_s_slabs_are_written_by_several_workers_as_one_process_would(
    tmp_path: Path,
) -> None:
    """150 slices = 3 slabs (64 + 64 + 22): with 2 workers the ingest's process writes slabs
    0 and 2 (decode, level 0, pyramid shards) and a pool process slab 1, at the same time;
    the tree, its checksum and every level equal --workers 1."""
    write_series(tmp_path / "in", slices=150, rows=160, columns=144, modality="MR", seed=5)
    one = voxelhub.ingest(tmp_path / "in", tmp_path / "one", workers=1, progress=False)
    out, calls = _ingest_with_slab_spy(tmp_path, tmp_path / "two", "spy")
    assert out["written"] == 1 and out["exit_code"] == 0, out
    (call,) = calls  # the pool's one slab, in another process
    assert call.split("-")[1] == "64" and call.split("-")[0] != str(out["pid"])
    (ref,), (row,) = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert row["checksum"] == ref["checksum"] and row["slices"] == 150
    a = zarr.open_group(str(tmp_path / "one" / ref["store_path"]), mode="r")
    b = zarr.open_group(str(tmp_path / "two" / row["store_path"]), mode="r")
    assert sorted(a.array_keys()) == sorted(b.array_keys()) and len(list(b.array_keys())) > 1
    for key in a.array_keys():
        np.testing.assert_array_equal(np.asarray(b[key][...]), np.asarray(a[key][...]))
    assert content_checksum(b["0"]) == row["checksum"]
    assert one.exit_code == 0


def test_a_slab_worker_that_dies_fails_the_volume_and_leaves_no_tree(tmp_path: Path) -> None:
    write_series(tmp_path / "in", slices=150, rows=16, columns=20, modality="MR", seed=6)
    store = tmp_path / "store"
    out, _ = _ingest_with_slab_spy(tmp_path, store, "kill")
    assert out["written"] == 0 and out["exit_code"] == 2, out
    (failed,) = out["failed"]
    assert "BrokenProcessPool" in failed["reason"]
    assert not list(store.glob("projects/*/*/*.ome.zarr")) and not _rows(store)
    tmp = store / ".tmp"  # Location.new_temporary's folder: the half-written tree is gone
    assert not tmp.exists() or not list(tmp.iterdir())


def test_index_lets_the_caller_work_once_its_workers_are_forked(tmp_path: Path) -> None:
    """The ingest loads zarr and SQLAlchemy in a thread while the index workers read: only
    after every worker has forked (a fork during an import could copy a held import lock)."""
    import multiprocessing

    _three_series(tmp_path / "in")
    seen: list[int] = []
    found = index(
        [tmp_path / "in"],
        workers=2,
        batch_size=4,
        progress=False,
        while_reading=lambda: seen.append(len(multiprocessing.active_children())),
    )
    assert seen == [2] and len(found.frames) == 6 + 7 + 8
    index([tmp_path / "in"], workers=1, progress=False, while_reading=lambda: seen.append(-1))
    assert seen == [2]  # one worker: nothing runs beside the reading


def test_a_colour_volume_s_slabs_over_two_workers_equal_one_process(tmp_path: Path) -> None:
    """A colour slab is (c, z, y, x): its shared slot holds all three channels."""
    from tests.dicom.test_colour import _colour_series

    grey = write_series(tmp_path / "grey", slices=70, rows=16, columns=20, modality="MR", seed=8)
    decoded = _colour_series(tmp_path / "in", grey)
    for workers, store in ((1, "one"), (2, "two")):
        report = voxelhub.ingest(tmp_path / "in", tmp_path / store, workers=workers, progress=False)
        assert report.exit_code == 0, report.summary()
    (ref,), (row,) = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert row["checksum"] == ref["checksum"] and row["channels"] == 3
    level0 = np.asarray(zarr.open_group(str(tmp_path / "two" / row["store_path"]), mode="r")["0"])
    assert level0.shape == decoded.shape  # (c, z, y, x); slices in space, as the planner sorts
    ones = zarr.open_group(str(tmp_path / "one" / ref["store_path"]), mode="r")["0"]
    np.testing.assert_array_equal(level0, np.asarray(ones))


def test_slabs_over_two_workers_into_an_s3_store(
    tmp_path: Path, s3_bucket: tuple[str, dict[str, str]]
) -> None:
    """The forked slab processes write through their own S3 client (moto's real S3 API)."""
    bucket, options = s3_bucket
    write_series(tmp_path / "in", slices=150, rows=160, columns=144, modality="MR", seed=9)
    voxelhub.ingest(tmp_path / "in", tmp_path / "one", workers=1, progress=False)
    url = f"s3://{bucket}/store"
    catalog_url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    location = open_location(url, {**options, "skip_instance_cache": True})
    report = voxelhub.ingest(
        tmp_path / "in", location, catalog_url=catalog_url, workers=2, progress=False
    )
    assert report.exit_code == 0, report.summary()
    (ref,) = _rows(tmp_path / "one")
    cat = voxelhub.open_catalog(url, catalog_url=catalog_url, storage_options=options)
    try:
        (row,) = cat.series().to_dict("records")
        assert row["checksum"] == ref["checksum"]
        np.testing.assert_array_equal(
            np.asarray(cat.open_series(row["volume_uid"])),
            np.asarray(zarr.open_group(str(tmp_path / "one" / ref["store_path"]), mode="r")["0"]),
        )
    finally:
        cat.close()
