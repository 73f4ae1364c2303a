"""Envelope encryption of stored chunks: keys, the codec, rotation, and what is left on disk."""

from __future__ import annotations

import concurrent.futures as cf
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from voxelhub.store.encryption import Aes256GcmCodec, CorruptChunk, use_keys
from voxelhub.store.keys import FileKeyProvider, KeyRing, MissingKey

PROJECT = "lung-trial"


@pytest.fixture
def ring(tmp_path: Path) -> Iterator[KeyRing]:
    provider = FileKeyProvider.create(tmp_path / "secret" / "master.json")
    keys = KeyRing(tmp_path / "store" / ".keys", provider)
    use_keys(keys)
    yield keys
    use_keys(None)


def volume() -> np.ndarray:
    rng = np.random.default_rng(7)
    data = rng.integers(-1000, 2000, size=(40, 128, 128), dtype=np.int16)
    data[:, 40:60, 40:60] = 1234  # a block a plaintext chunk would show
    return data


def write(path: Path, ring: KeyRing, data: np.ndarray, project: str = PROJECT) -> zarr.Array:
    """As the store's writer lays volumes out: shards of whole slabs, 16x64x64 inner chunks."""
    array = zarr.create_array(
        store=str(path),
        shape=data.shape,
        dtype=data.dtype,
        shards=(32, 128, 128),
        chunks=(16, 64, 64),
        compressors=[
            BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
            Aes256GcmCodec(key_id=ring.current(project)),
        ],
        zarr_format=3,
    )
    array[...] = data
    return array


def files_under(path: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_round_trip_leaves_no_plaintext_on_disk(tmp_path: Path, ring: KeyRing) -> None:
    data = volume()
    write(tmp_path / "enc.zarr", ring, data)
    assert np.array_equal(zarr.open_array(str(tmp_path / "enc.zarr"))[...], data)
    # the same volume unencrypted, for what its chunks look like on disk
    plain = zarr.create_array(
        store=str(tmp_path / "plain.zarr"),
        shape=data.shape,
        dtype=data.dtype,
        shards=(32, 128, 128),
        chunks=(16, 64, 64),
        compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
        zarr_format=3,
    )
    plain[...] = data
    on_disk = b"".join(b for p, b in files_under(tmp_path / "enc.zarr").items() if "c" in p.parts)
    assert b"\x02\x01" not in on_disk[:2]  # no Blosc header at the start of a shard
    slab = np.ascontiguousarray(data[0, 40, 40:60]).tobytes()
    assert slab not in on_disk
    assert b"\xd2\x04" * 8 not in on_disk  # the 1234 block, raw
    shards = [b for p, b in files_under(tmp_path / "plain.zarr").items() if "c" in p.parts]
    for shard in shards:  # no 64-byte run of any unencrypted shard survives encryption
        for start in range(0, len(shard) - 64, 4096):
            assert shard[start : start + 64] not in on_disk
    # the key ring holds the data key wrapped only; the master key is elsewhere
    key_files = files_under(tmp_path / "store" / ".keys")
    assert key_files and all(oct(p.stat().st_mode & 0o777) == "0o600" for p in key_files)
    data_key = ring.data_key(ring.current(PROJECT))
    assert all(data_key not in blob for blob in key_files.values())
    assert all(PROJECT not in p.name for p in key_files)


def test_no_key_wrong_key_and_a_flipped_bit_fail_loudly(tmp_path: Path, ring: KeyRing) -> None:
    data = volume()
    write(tmp_path / "enc.zarr", ring, data)
    key_id = ring.current(PROJECT)

    use_keys(None)
    with pytest.raises(MissingKey, match=key_id):
        zarr.open_array(str(tmp_path / "enc.zarr"))[...]

    other = FileKeyProvider.create(tmp_path / "other" / "master.json")
    use_keys(KeyRing(tmp_path / "store" / ".keys", other))
    with pytest.raises(MissingKey, match="is not in"):
        zarr.open_array(str(tmp_path / "enc.zarr"))[...]

    use_keys(ring)
    shard = next(
        p for p in sorted((tmp_path / "enc.zarr").rglob("*")) if p.is_file() and "c" in p.parts
    )
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0x01
    shard.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunk, match=key_id):
        zarr.open_array(str(tmp_path / "enc.zarr"))[...]


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    provider = FileKeyProvider.create(tmp_path / "master.json")
    os.chmod(provider.path, 0o644)
    with pytest.raises(MissingKey, match="mode 0600"):
        FileKeyProvider(provider.path)
    os.chmod(provider.path, 0o600)
    link = tmp_path / "link.json"
    link.symlink_to(provider.path)
    with pytest.raises(MissingKey, match="cannot open"):
        FileKeyProvider(link)
    with pytest.raises(MissingKey, match="refusing to overwrite"):
        FileKeyProvider.create(provider.path)


def test_a_pickled_array_carries_no_key(tmp_path: Path, ring: KeyRing) -> None:
    write(tmp_path / "enc.zarr", ring, volume())
    array = zarr.open_array(str(tmp_path / "enc.zarr"))
    blob = pickle.dumps(array)
    assert ring.data_key(ring.current(PROJECT)) not in blob
    master = ring.provider._keys[ring.provider.current_id]  # type: ignore[attr-defined]
    assert master not in blob


def test_rotating_the_master_key_rewraps_without_touching_volumes(
    tmp_path: Path, ring: KeyRing
) -> None:
    data = volume()
    write(tmp_path / "enc.zarr", ring, data)
    before = files_under(tmp_path / "enc.zarr")
    provider = ring.provider
    assert isinstance(provider, FileKeyProvider)
    old = provider.current_id

    key_id = ring.current(PROJECT)
    expected = ring.data_key(key_id)
    stop = False
    errors: list[BaseException] = []

    def reader() -> int:
        """A process opening the store during the rotation: its own key file read, its own ring,
        and a full read of the volume."""
        reads = 0
        while not stop or reads < 20:
            try:
                fresh = KeyRing(ring.folder, FileKeyProvider(provider.path))
                assert fresh.data_key(key_id) == expected
                assert np.array_equal(zarr.open_array(str(tmp_path / "enc.zarr"))[...], data)
            except BaseException as e:
                errors.append(e)
            reads += 1
        return reads

    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(reader) for _ in range(4)]
        new = provider.add_master()
        assert ring.rewrap() == 1
        provider.retire(old)
        stop = True
        reads = sum(f.result() for f in futures)
    assert errors == [], errors[:3]
    assert reads >= 80
    assert ring.masters_in_use() == {new}
    assert files_under(tmp_path / "enc.zarr") == before  # no volume rewritten

    # a fresh process with only the new master key file reads everything
    fresh = KeyRing(tmp_path / "store" / ".keys", FileKeyProvider(provider.path))
    use_keys(fresh)
    assert np.array_equal(zarr.open_array(str(tmp_path / "enc.zarr"))[...], data)


def test_a_new_data_key_for_new_writes_keeps_old_volumes_readable(
    tmp_path: Path, ring: KeyRing
) -> None:
    first = volume()
    write(tmp_path / "old.zarr", ring, first)
    old_id = ring.current(PROJECT)
    new_id = ring.rotate(PROJECT)
    assert new_id != old_id and ring.current(PROJECT) == new_id
    second = first[::-1].copy()
    write(tmp_path / "new.zarr", ring, second)
    codecs = {
        name: zarr.open_array(str(tmp_path / name)).metadata.to_dict()["codecs"][0]
        for name in ("old.zarr", "new.zarr")
    }
    inner = {n: c["configuration"]["codecs"][-1]["configuration"] for n, c in codecs.items()}
    assert inner["old.zarr"]["key_id"] == old_id and inner["new.zarr"]["key_id"] == new_id
    assert inner["old.zarr"]["salt"] != inner["new.zarr"]["salt"]
    provider = ring.provider
    assert isinstance(provider, FileKeyProvider)
    use_keys(KeyRing(ring.folder, FileKeyProvider(provider.path)))
    assert np.array_equal(zarr.open_array(str(tmp_path / "old.zarr"))[...], first)
    assert np.array_equal(zarr.open_array(str(tmp_path / "new.zarr"))[...], second)


def test_a_reader_that_loaded_the_key_file_before_a_rotation_still_opens_keys(
    tmp_path: Path, ring: KeyRing
) -> None:
    """It read the old key file, then the key records were re-wrapped and the old master
    retired: it reads the key file again instead of failing."""
    key_id = ring.current(PROJECT)
    expected = ring.data_key(key_id)
    provider = ring.provider
    assert isinstance(provider, FileKeyProvider)
    stale = KeyRing(ring.folder, FileKeyProvider(provider.path))  # loaded before the rotation
    old = provider.current_id
    provider.add_master()
    ring.rewrap()
    provider.retire(old)
    assert stale.data_key(key_id) == expected


def test_a_fresh_process_finds_the_codec_and_asks_for_the_key(
    tmp_path: Path, ring: KeyRing
) -> None:
    """zarr loads the codec by its entry point: a process that never imported VoxelHub's
    encryption module opens the array and fails only for want of the key, naming it."""
    import subprocess
    import sys

    write(tmp_path / "enc.zarr", ring, volume())
    code = (
        "import sys, zarr\n"
        "a = zarr.open_array(sys.argv[1])\n"
        "print(a.shape)\n"
        "try:\n"
        "    a[0, 0, 0]\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "enc.zarr")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "(40, 128, 128)" in out.stdout
    assert (
        f"MissingKey this volume is encrypted with data key {ring.current(PROJECT)}" in out.stdout
    )


def _current_in_a_process(args: tuple[str, str]) -> str:
    folder, key_file = args
    return KeyRing(folder, FileKeyProvider(key_file)).current(PROJECT)


def test_processes_writing_a_new_project_at_once_agree_on_one_data_key(tmp_path: Path) -> None:
    """Ingest workers (or two ingests) asking for a new project's key at the same moment: one
    key is made, the others read it (without the folder lock each made its own, and all but the
    last were lost with the volumes they sealed)."""
    import multiprocessing

    provider = FileKeyProvider.create(tmp_path / "secret" / "master.json")
    folder = str(tmp_path / "store" / ".keys")
    with multiprocessing.get_context("fork").Pool(6) as pool:
        ids = pool.map(_current_in_a_process, [(folder, str(provider.path))] * 24, chunksize=1)
    assert len(set(ids)) == 1
    assert KeyRing(folder, provider).current(PROJECT) == ids[0]
