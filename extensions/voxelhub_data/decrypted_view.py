"""What the data service serves of an encrypted volume: a plaintext view, keys never leave it.

Users' kernels and Dask workers hold no key; they read through the service with zarr as for any
volume.  For an array whose inner chunks are sealed (``voxelhub.aes256gcm`` inside
``sharding_indexed``) the service answers with its ``zarr.json`` minus the cipher, and each
shard as zarr would have written it without the cipher: the same inner chunks (decrypted,
still Blosc-compressed, so 32 bytes shorter each) in the same order, then an index of their new
offsets.  The stored index (clear, ``crc32c``-checked) says where each inner chunk is; a range
request decrypts only the inner chunks it overlaps.  So the client's coalesced range reads
(:class:`voxelhub.store.service_store.ServiceStore`) work unchanged, a few requests per shard.
(An unsharded view, one request per inner chunk, was measured first: twice the clear read time
through the service, ``benchmarks/encryption.py``.)  The volume's own ``zarr.json`` comes back
with its sealed attributes merged in (:mod:`voxelhub.store.sidecar`); the sealed object itself
is never served.

A volume that is not encrypted is not touched: :func:`read` answers None and the service reads
the key as before.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numpy as np

from voxelhub.store import sidecar
from voxelhub.store.encryption import (
    CODEC_NAME,
    OVERHEAD,
    decrypt_chunk,
    keys_in_use,
    use_keys,
)
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


class LocalVolume:
    """The keys of one volume of a local store, opened refusing symbolic links (as every read)."""

    def __init__(self, root: str, volume: paths.VolumeKey) -> None:
        self.root, self.volume = root, volume

    def open(self, key: str) -> int:
        """A read-only fd of ``key``; FileNotFoundError when it is missing."""
        request = paths.VolumeKey(self.volume.project, self.volume.volume_path, key)
        return paths.open_key(self.root, request)

    def read(self, key: str) -> bytes:
        fd = self.open(key)
        try:
            return os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)


class View:
    """A key as the view serves it: its size, and any byte range of it on demand."""

    def __init__(self, size: int, read: Callable[[int, int], bytes]) -> None:
        self.size = size
        self.read = read
        """``read(start, stop)``: bytes ``start:stop`` of the served key."""

    @classmethod
    def of(cls, data: bytes) -> View:
        return cls(len(data), lambda start, stop: data[start:stop])


def read(key: paths.VolumeKey, volume: LocalVolume) -> View | None:
    """The plaintext view of ``key`` of an encrypted volume; None when the key is not part of
    an encrypted array or volume (serve it as stored).  FileNotFoundError: nothing there (the
    sealed attributes object is never served)."""
    name = key.key
    if name.rsplit("/", 1)[-1] == sidecar.SIDECAR_KEY:  # a volume's, or a label image's
        raise FileNotFoundError(name)
    if name == "zarr.json":
        merged = _group_metadata(volume)
        return None if merged is None else View.of(merged)
    if name.endswith("/zarr.json"):
        meta = _metadata(volume, name)
        if meta.get("node_type") == "group":  # a label image's sealed names and source
            merged = _group_metadata(volume, name)
            return None if merged is None else View.of(merged)
        rewritten = _plain_metadata(meta) if meta.get("node_type") == "array" else None
        return None if rewritten is None else View.of(json.dumps(rewritten).encode())
    split = _chunk_split(name)
    if split is None:
        return None
    array, _coords = split
    layout = _layout(_metadata(volume, f"{array}/zarr.json" if array else "zarr.json"))
    if layout is None:
        return None
    return layout.view(name, volume)


def _group_metadata(volume: LocalVolume, name: str = "zarr.json") -> bytes | None:
    meta = json.loads(volume.read(name))
    folder = name[: -len("zarr.json")]
    attrs = meta.get("attributes") or {}
    own = attrs.get("voxelhub")
    if not isinstance(own, dict) or not sidecar.is_sealed(own):
        return None

    def sealed(key: str) -> bytes | None:
        try:
            return volume.read(folder + key)
        except FileNotFoundError:
            return None

    attrs["voxelhub"] = sidecar.merged(own, sealed)
    meta["attributes"] = attrs
    return json.dumps(meta).encode()


_Identity = tuple[str, int, int, int, int]
_cache: dict[tuple[str, _Identity], Any] = {}
_cache_lock = threading.Lock()
_CACHE_ENTRIES = 8192


def _identity(volume: LocalVolume, key: str, fd: int) -> _Identity:
    """What tells one version of a file from another (a replaced label image is a new file)."""
    st = os.fstat(fd)
    return (volume.volume.volume_path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _cached(kind: str, identity: _Identity, make: Callable[[], Any]) -> Any:
    with _cache_lock:
        found = _cache.get((kind, identity))
    if found is None:
        found = make()
        with _cache_lock:
            if len(_cache) >= _CACHE_ENTRIES:
                _cache.clear()
            _cache[(kind, identity)] = found
    return found


def _metadata(volume: LocalVolume, name: str) -> dict[str, Any]:
    """A ``zarr.json``, parsed once per version of the file."""
    fd = volume.open(name)
    try:
        identity = _identity(volume, name, fd)
        return dict(_cached("meta", identity, lambda: json.loads(os.pread(fd, identity[-1], 0))))
    finally:
        os.close(fd)


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


@dataclass(frozen=True)
class _ShardPlan:
    """A stored shard's inner chunks in file order, and the served shard's index."""

    offsets: np.ndarray
    lengths: np.ndarray
    plain_ends: np.ndarray
    """End of each inner chunk in the served shard (its start is end - length + 32)."""
    index: bytes
    size: int


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

    def view(self, stored: str, volume: LocalVolume) -> View:
        """Chunk (or shard) ``stored`` with every inner chunk decrypted.

        A shard is served as the shard zarr would have written without the cipher: the same
        inner chunks in the same order, each 32 bytes shorter, then an index (``crc32c``) of
        their new offsets; a range of it decrypts only the inner chunks it overlaps, so the
        client's coalesced range reads (``ServiceStore``) work as on a clear volume."""
        if self.separator != "/":
            raise UnsupportedLayout(f"chunk key separator {self.separator!r}")
        fd = volume.open(stored)
        try:
            identity = _identity(volume, stored, fd)
            if not self.sharded:
                plain = decrypt_chunk(self.key_id, self.salt, os.pread(fd, identity[-1], 0))
                return View.of(plain)
            plan = _cached("plan", identity, lambda: self._plan(stored, fd, identity[-1]))
        finally:
            os.close(fd)
        return View(plan.size, lambda start, stop: self._read(volume, stored, plan, start, stop))

    def _read(
        self, volume: LocalVolume, stored: str, plan: _ShardPlan, start: int, stop: int
    ) -> bytes:
        parts: list[bytes] = []
        first = int(np.searchsorted(plan.plain_ends, start, side="right"))
        fd = volume.open(stored)
        try:
            for k in range(first, len(plan.offsets)):
                plain_start = int(plan.plain_ends[k]) - int(plan.lengths[k]) + OVERHEAD
                if plain_start >= stop:
                    break
                sealed = os.pread(fd, int(plan.lengths[k]), int(plan.offsets[k]))
                plain = decrypt_chunk(self.key_id, self.salt, sealed)
                parts.append(plain[max(0, start - plain_start) : stop - plain_start])
        finally:
            os.close(fd)
        data_end = plan.size - len(plan.index)
        if stop > data_end:
            parts.append(plan.index[max(0, start - data_end) : stop - data_end])
        return b"".join(parts)

    def _plan(self, stored: str, fd: int, size: int) -> _ShardPlan:
        """Where each inner chunk is in the stored shard and in the served one."""
        n = self._index_bytes
        if size < n:
            raise _corrupt(self.key_id, stored, "shorter than its index")
        raw = os.pread(fd, n, size - n)
        body, crc = raw[:-4], raw[-4:]
        if np.uint32(google_crc32c.value(body)).tobytes() != crc:
            raise _corrupt(self.key_id, stored, "its index fails its checksum")
        index = np.frombuffer(body, dtype="<u8").reshape(-1, 2)
        present = np.flatnonzero(~((index[:, 0] == EMPTY) & (index[:, 1] == EMPTY)))
        order = present[np.argsort(index[present, 0], kind="stable")]
        offsets, lengths = index[order, 0].astype(np.int64), index[order, 1].astype(np.int64)
        if len(order) and ((lengths < OVERHEAD).any() or int((offsets + lengths).max()) > size - n):
            raise _corrupt(self.key_id, stored, "its index points outside the chunks")
        plain_lengths = lengths - OVERHEAD
        plain_ends = np.cumsum(plain_lengths)
        served = np.full_like(index, EMPTY)
        served[order, 0] = (plain_ends - plain_lengths).astype(np.uint64)
        served[order, 1] = plain_lengths.astype(np.uint64)
        body = served.astype("<u8").tobytes()
        new_index = body + np.uint32(google_crc32c.value(body)).tobytes()
        data = int(plain_ends[-1]) if len(order) else 0
        return _ShardPlan(offsets, lengths, plain_ends, new_index, data + len(new_index))

    @property
    def _index_bytes(self) -> int:
        return 16 * math.prod(self.per_shard) + 4


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


def _plain_metadata(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The array's metadata as the view serves it: the same layout, without the cipher."""
    if not _encrypted(meta):
        return None
    out = dict(meta)
    codecs = [c for c in meta["codecs"] if not _is_cipher(c)]
    if codecs and codecs[0]["name"] == "sharding_indexed":
        config = dict(codecs[0]["configuration"])
        config["codecs"] = [c for c in config["codecs"] if not _is_cipher(c)]
        codecs[0] = {**codecs[0], "configuration": config}
    out["codecs"] = codecs
    return out
