"""What the data service serves of an encrypted volume: a plaintext view, keys never leave it.

Users' kernels and Dask workers hold no key; they read through the service with zarr as for any
volume.  For an array whose inner chunks are sealed (``voxelhub.aes256gcm`` inside
``sharding_indexed``) the service answers with a rewritten ``zarr.json`` describing an
*unsharded* array whose chunks are the inner chunks and whose codecs are the inner codecs
without the cipher.  A request for chunk ``c/i/j/k`` is mapped to its shard and inner index:
the shard index (clear, ``crc32c``-checked) gives the inner chunk's byte range, that range is
read, decrypted and returned — still Blosc-compressed, so the bytes on the wire are about what
a clear volume's range read moves.  The volume's own ``zarr.json`` comes back with its sealed
attributes merged in (:mod:`voxelhub.store.sidecar`); the sealed object itself is not served.

A volume that is not encrypted is not touched: :func:`read` answers None and the service reads
the key as before.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable
from typing import Any

import google_crc32c
import numpy as np

from voxelhub.store import sidecar
from voxelhub.store.encryption import CODEC_NAME, decrypt_chunk, keys_in_use, use_keys
from voxelhub.store.keys import store_key_ring
from voxelhub_data import paths

EMPTY = 2**64 - 1
"""Offset and length of an inner chunk a shard does not hold (zarr's sharding spec)."""
_DEFAULT_INDEX_CODECS = [
    {"name": "bytes", "configuration": {"endian": "little"}},
    {"name": "crc32c"},
]


class UnsupportedLayout(ValueError):
    """An encrypted array laid out in a way this view cannot serve (index at the start …)."""


def use_key_file(store: str, key_file: str) -> bool:
    """Open the local store's key ring with the master key file (the service's only keys)."""
    if not key_file:
        return False
    if "://" in store and not store.startswith("file://"):
        raise SystemExit(
            "voxelhub-data: key_file is for a local store (the key ring lives in it); on "
            "object storage use the bucket's default encryption (SSE-KMS)"
        )
    use_keys(store_key_ring(store.removeprefix("file://"), key_file))
    return True


def enabled() -> bool:
    return keys_in_use() is not None


Read = Callable[[str, int | None, int | None], bytes]
"""``read(key inside the volume, start, stop)``: bytes of the key (whole with None, None);
FileNotFoundError when it is missing."""
Size = Callable[[str], int]


def local_reader(root: str, volume: paths.VolumeKey) -> tuple[Read, Size]:
    """Read keys of a volume in a local store, refusing symbolic links (as every read)."""

    def open_fd(key: str) -> int:
        return paths.open_key(root, paths.VolumeKey(volume.project, volume.volume_path, key))

    def read(key: str, start: int | None, stop: int | None) -> bytes:
        fd = open_fd(key)
        try:
            first = start or 0
            last = os.fstat(fd).st_size if stop is None else stop
            return os.pread(fd, max(0, last - first), first)
        finally:
            os.close(fd)

    def size(key: str) -> int:
        fd = open_fd(key)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    return read, size


def read(key: paths.VolumeKey, read_key: Read, size_of: Size) -> bytes | None:
    """The plaintext view of ``key`` of an encrypted volume; None when the key is not part of
    an encrypted array or volume (serve it as stored).  FileNotFoundError: nothing there (an
    empty inner chunk, the sealed attributes object)."""
    name = key.key
    if name == sidecar.SIDECAR_KEY:
        raise FileNotFoundError(name)
    if name == "zarr.json":
        return _group_metadata(read_key)
    if name.endswith("/zarr.json"):
        meta = _metadata(read_key, name)
        rewritten = _unsharded(meta) if meta.get("node_type") == "array" else None
        return None if rewritten is None else json.dumps(rewritten).encode()
    split = _chunk_split(name)
    if split is None:
        return None
    array, coords = split
    meta = _metadata(read_key, f"{array}/zarr.json" if array else "zarr.json")
    layout = _layout(meta)
    if layout is None:
        return None
    return layout.read_chunk(array, coords, read_key, size_of)


def _group_metadata(read_key: Read) -> bytes | None:
    meta = json.loads(read_key("zarr.json", None, None))
    attrs = meta.get("attributes") or {}
    own = attrs.get("voxelhub")
    if not isinstance(own, dict) or not sidecar.is_sealed(own):
        return None

    def sealed(name: str) -> bytes | None:
        try:
            return read_key(name, None, None)
        except FileNotFoundError:
            return None

    attrs["voxelhub"] = sidecar.merged(own, sealed)
    meta["attributes"] = attrs
    return json.dumps(meta).encode()


_meta_cache: dict[tuple[str, int], dict[str, Any]] = {}
_meta_lock = threading.Lock()


def _metadata(read_key: Read, name: str) -> dict[str, Any]:
    raw = read_key(name, None, None)
    # parsed once per distinct document (an overwritten label image has a new salt: new text)
    cache_key = (name, hash(raw))
    with _meta_lock:
        found = _meta_cache.get(cache_key)
    if found is None:
        found = json.loads(raw)
        with _meta_lock:
            if len(_meta_cache) > 4096:
                _meta_cache.clear()
            _meta_cache[cache_key] = found
    return found


def _chunk_split(name: str) -> tuple[str, tuple[int, ...]] | None:
    """``(array path, chunk coordinates)`` of a chunk key (``<array>/c/1/2/3``), else None."""
    parts = name.split("/")
    for i, part in enumerate(parts):
        rest = parts[i + 1 :]
        if part == "c" and rest and all(p.isdigit() for p in rest):
            return "/".join(parts[:i]), tuple(int(p) for p in rest)
    return None


def _is_cipher(codec: Any) -> bool:
    return isinstance(codec, dict) and codec.get("name") == CODEC_NAME


class _Layout:
    """Where an encrypted array's chunk ``coords`` (of the plaintext view) lie, and its key."""

    def __init__(self, meta: dict[str, Any]) -> None:
        outer = meta["chunk_grid"]["configuration"]["chunk_shape"]
        codecs = meta["codecs"]
        self.separator = str(
            (meta.get("chunk_key_encoding") or {}).get("configuration", {}).get("separator", "/")
        )
        self.sharded = codecs[0]["name"] == "sharding_indexed"
        if self.sharded:
            config = codecs[0]["configuration"]
            inner = config["chunk_shape"]
            cipher = next(c for c in config["codecs"] if _is_cipher(c))
            if (
                config.get("index_location", "end") != "end"
                or config.get("index_codecs", _DEFAULT_INDEX_CODECS) != _DEFAULT_INDEX_CODECS
            ):
                raise UnsupportedLayout("an encrypted shard with a non-default index layout")
            self.per_shard = tuple(o // i for o, i in zip(outer, inner, strict=True))
        else:
            cipher = next(c for c in codecs if _is_cipher(c))
            self.per_shard = tuple(1 for _ in outer)
        self.key_id = str(cipher["configuration"]["key_id"])
        self.salt = str(cipher["configuration"]["salt"])

    def read_chunk(
        self, array: str, coords: tuple[int, ...], read_key: Read, size_of: Size
    ) -> bytes:
        shard = tuple(c // n for c, n in zip(coords, self.per_shard, strict=True))
        prefix = f"{array}/" if array else ""
        stored = prefix + "c/" + "/".join(str(s) for s in shard)
        if self.separator != "/":
            raise UnsupportedLayout(f"chunk key separator {self.separator!r}")
        if not self.sharded:
            return decrypt_chunk(self.key_id, self.salt, read_key(stored, None, None))
        inner = tuple(c % n for c, n in zip(coords, self.per_shard, strict=True))
        n_chunks = math.prod(self.per_shard)
        index_bytes = 16 * n_chunks + 4
        size = size_of(stored)
        if size < index_bytes:
            raise _corrupt(self.key_id, stored, "shorter than its index")
        raw = read_key(stored, size - index_bytes, size)
        body, crc = raw[:-4], raw[-4:]
        if np.uint32(google_crc32c.value(body)).tobytes() != crc:
            raise _corrupt(self.key_id, stored, "its index fails its checksum")
        index = np.frombuffer(body, dtype="<u8").reshape((*self.per_shard, 2))
        offset, length = (int(v) for v in index[inner])
        if offset == EMPTY and length == EMPTY:
            raise FileNotFoundError(stored)  # an empty inner chunk: zarr uses the fill value
        if offset + length > size - index_bytes:
            raise _corrupt(self.key_id, stored, "its index points past the chunks")
        return decrypt_chunk(self.key_id, self.salt, read_key(stored, offset, offset + length))


def _corrupt(key_id: str, key: str, why: str) -> Exception:
    from voxelhub.store.encryption import CorruptChunk

    return CorruptChunk(f"shard {key} of an array encrypted with data key {key_id}: {why}")


def _layout(meta: dict[str, Any]) -> _Layout | None:
    if meta.get("node_type") != "array" or not _encrypted(meta):
        return None
    return _Layout(meta)


def _encrypted(meta: dict[str, Any]) -> bool:
    codecs = meta.get("codecs") or []
    if any(_is_cipher(c) for c in codecs):
        return True
    return bool(codecs) and any(
        _is_cipher(c) for c in codecs[0].get("configuration", {}).get("codecs", [])
    )


def _unsharded(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The array's metadata as the view serves it: chunks = inner chunks, no cipher."""
    if not _encrypted(meta):
        return None
    out = dict(meta)
    codecs = list(meta["codecs"])
    if codecs[0]["name"] == "sharding_indexed":
        config = codecs[0]["configuration"]
        out["chunk_grid"] = {
            "name": "regular",
            "configuration": {"chunk_shape": list(config["chunk_shape"])},
        }
        codecs = list(config["codecs"])
    out["codecs"] = [c for c in codecs if not _is_cipher(c)]
    return out
