"""The data service's plaintext view of an encrypted volume, key by key, read by plain zarr.

Every key a reader asks for is answered by :mod:`voxelhub_data.decrypted_view` over the real
files of an encrypted ingest; the answers, put into a memory store, must open with zarr in a
reader that holds no key and give the volume's voxels, attributes and label images.  (The same
through the real hub stack, HTTP ranges and all: tests/hub/test_encrypted_service.py.)
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.core.buffer import cpu
from zarr.storage import MemoryStore

from voxelhub import ingest, open_catalog
from voxelhub.store.encryption import CorruptChunk, use_keys
from voxelhub.store.keys import FileKeyProvider, MissingKey
from voxelhub.store.sidecar import SIDECAR_KEY

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "extensions"))

from voxelhub_data import decrypted_view, paths

pytestmark = pytest.mark.usefixtures("no_keys_left")  # conftest


@pytest.fixture
def encrypted(tmp_path: Path, shared_dicom: Path) -> tuple[Path, str, np.ndarray]:
    """An encrypted ingest of a real series, with a label image; (store, path, voxels)."""
    from voxelhub.roi.labels import write_labels

    key_file = FileKeyProvider.create(tmp_path / "secret" / "master.json").path
    store = tmp_path / "store"
    source = shared_dicom / "mr_siemens_fieldmap_2echo"  # 2 volumes, odd in-plane size
    report = ingest(source, store, project="p", encrypt=True, key_file=key_file, progress=False)
    assert report.written and not report.failed
    cat = open_catalog(store)
    uid = cat.series().volume_uid.iloc[0]
    voxels = np.asarray(cat.open_series(uid))
    write_labels(cat, uid, "mask", voxels > voxels.mean())
    path = cat.stored_volume(uid).store_path
    cat.close()
    return store, path, voxels


def view_of(store: Path, volume: str) -> dict[str, bytes]:
    """Every key of the volume as the service would serve it (missing chunks left out)."""
    served: dict[str, bytes] = {}

    def get(key: str) -> bytes | None:
        request = paths.parse(f"{volume}/{key}")
        reader = decrypted_view.LocalVolume(str(store), request)
        try:
            view = decrypted_view.read(request, reader)
        except FileNotFoundError:
            return None
        if view is None:
            return reader.read(key)
        whole = view.read(0, view.size)
        # any range is the same bytes as that slice of the whole (what ServiceStore asks for)
        for start, stop in (
            (0, 1),
            (5, 70_000),
            (view.size // 3, view.size),
            (view.size - 9, view.size),
        ):
            assert view.read(max(0, start), stop) == whole[max(0, start) : stop]
        return whole

    root = store / volume
    for meta_file in sorted(root.rglob("zarr.json")):
        key = meta_file.relative_to(root).as_posix()
        served[key] = get(key) or b""
        meta = json.loads(served[key])
        if meta["node_type"] != "array":
            continue
        array = key.removesuffix("zarr.json")
        chunk = meta["chunk_grid"]["configuration"]["chunk_shape"]
        grid = [range(math.ceil(n / c)) for n, c in zip(meta["shape"], chunk, strict=True)]
        for coords in itertools.product(*grid):
            chunk_key = f"{array}c/" + "/".join(map(str, coords))
            found = get(chunk_key)
            if found is not None:
                served[chunk_key] = found
    return served


def test_a_keyless_reader_gets_the_volume_from_the_view(
    encrypted: tuple[Path, str, np.ndarray],
) -> None:
    store, volume, voxels = encrypted
    served = view_of(store, volume)
    use_keys(None)  # the reader holds no key: the view is plain zarr
    buffers = {k: cpu.Buffer.from_bytes(v) for k, v in served.items()}
    group = zarr.open_group(MemoryStore(buffers), mode="r", zarr_format=3)
    level0 = group["0"]
    assert level0.shards == zarr.open_array(str(store / volume / "0")).shards
    assert level0.chunks == (16, 64, 64)
    assert np.array_equal(level0[...], voxels)
    meta = dict(group.attrs["voxelhub"])
    assert (
        meta["source_instance_uids"]
        and meta["acquisition"]
        and "attributes" not in meta["encryption"]
    )
    label_meta = dict(group["labels/mask"].attrs["voxelhub"])  # sealed names merged back
    assert label_meta["names"] == {"1": "mask"} and "attributes" not in label_meta["encryption"]
    mask = group["labels/mask/0"][...]
    assert np.array_equal(mask.astype(bool), voxels > voxels.mean())
    assert not any(k.endswith(SIDECAR_KEY) for k in served)
    assert all(b"aes256gcm" not in v for k, v in served.items() if k.endswith("zarr.json"))


def test_the_view_names_the_key_and_refuses_a_changed_shard(
    encrypted: tuple[Path, str, np.ndarray],
) -> None:
    store, volume, _ = encrypted
    request = paths.parse(f"{volume}/0/c/0/0/0")
    reader = decrypted_view.LocalVolume(str(store), request)
    view = decrypted_view.read(request, reader)  # with keys: the plaintext shard
    assert view is not None and view.read(0, view.size)
    key_id = json.loads((store / volume / "zarr.json").read_text())["attributes"]["voxelhub"][
        "encryption"
    ]["key_id"]
    use_keys(None)
    with pytest.raises(MissingKey, match=key_id):
        view.read(0, 100)
    with pytest.raises(FileNotFoundError):
        decrypted_view.read(paths.parse(f"{volume}/{SIDECAR_KEY}"), reader)

    provider = FileKeyProvider(store.parent / "secret" / "master.json")
    from voxelhub.store.keys import KeyRing

    use_keys(KeyRing(store / ".keys", provider))
    shard = store / volume / "0" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0x01  # the index checksum
    shard.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunk, match="checksum"):
        decrypted_view.read(request, reader)
    raw[-1] ^= 0x01
    raw[40] ^= 0x01  # inside the first inner chunk
    shard.write_bytes(bytes(raw))
    view = decrypted_view.read(request, reader)
    assert view is not None
    view.read(view.size - 100, view.size)  # the index: no inner chunk decrypted
    with pytest.raises(CorruptChunk, match="failed authentication"):
        view.read(0, 10)


def test_a_served_shard_holds_its_file_only_while_it_is_served(
    encrypted: tuple[Path, str, np.ndarray],
) -> None:
    """The view reads a shard from the fd it planned it with (one walk per request); closing
    it (``with view:``, as the service does) gives the fd back, and ranges across inner chunks
    are the same bytes as that slice of the whole."""
    store, volume, _ = encrypted
    request = paths.parse(f"{volume}/0/c/0/0/0")
    reader = decrypted_view.LocalVolume(str(store), request)
    fds = Path("/proc/self/fd")
    before = len(list(fds.iterdir()))
    with decrypted_view.read(request, reader) as whole_view:  # type: ignore[union-attr]
        whole = whole_view.read(0, whole_view.size)
        assert len(list(fds.iterdir())) == before + 1
    for start in range(0, len(whole), len(whole) // 7):
        view = decrypted_view.read(request, reader)
        assert view is not None
        with view:
            assert view.read(start, start + 100_003) == whole[start : start + 100_003]
    assert len(list(fds.iterdir())) == before
    with pytest.raises(ValueError, match="closed"):  # never the file its fd number names now
        view.read(0, 10)
