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

import bisect
import functools
import json
import math
import os
import re
import threading
import weakref
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
    """A key as the view serves it: its size, and any byte range of it on demand.

    A shard's view keeps the file it was planned from open (so a request walks the store's
    path once, not once for the plan and again for the bytes); ``with view:`` or
    :meth:`close` gives it back, and a view dropped unclosed closes it when collected."""

    def __init__(self, size: int, read: Callable[[int, int], bytes], fd: int | None = None) -> None:
        self.size = size
        self.read = read
        """``read(start, stop)``: bytes ``start:stop`` of the served key."""
        self._closer = weakref.finalize(self, os.close, fd) if fd is not None else None

    @classmethod
    def of(cls, data: bytes) -> View:
        return cls(len(data), lambda start, stop: data[start:stop])

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self.read = _closed  # its fd number may already name another open file

    def __enter__(self) -> View:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _closed(start: int, stop: int) -> bytes:
    raise ValueError("read from a closed view of an encrypted key")


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
    array = _chunk_array(name)
    if array is None:
        return None
    return _chunk_view(volume, name, f"{array}/zarr.json" if array else "zarr.json")


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


_CHUNK_KEY = re.compile(r"(?:(.*)/)?c(?:/\d+)+")


def _chunk_array(name: str) -> str | None:
    """The array path of a chunk key (``<array>/c/1/2/3``; ``""`` for the root), else None."""
    found = _CHUNK_KEY.fullmatch(name)
    return None if found is None else found.group(1) or ""


def _is_cipher(codec: Any) -> bool:
    return isinstance(codec, dict) and codec.get("name") == CODEC_NAME


def _chunk_view(volume: LocalVolume, name: str, meta_name: str) -> View | None:
    """The plaintext view of chunk (or shard) ``name``; None when its array is not encrypted.

    One walk down to the chunk's file per request: its array's layout and its shard's plan are
    cached under the file's identity (a rewritten shard or a replaced label image is a new
    file: planned again, its ``zarr.json`` read again), and the view reads from that fd."""
    fd = volume.open(name)
    try:
        identity = _identity(volume, name, fd)
        size = identity[-1]
        layout, plan = _cached(
            "chunk", identity, lambda: _planned(volume, meta_name, name, fd, size)
        )
        if layout is None:
            return None
        if plan is None:  # an unsharded encrypted array: one chunk, decrypted whole
            return View.of(decrypt_chunk(layout.key_id, layout.salt, os.pread(fd, size, 0)))
        view = View(plan.size, functools.partial(layout.read, fd, name, plan), fd)
        fd = -1  # the view closes it
        return view
    finally:
        if fd >= 0:
            os.close(fd)


def _planned(
    volume: LocalVolume, meta_name: str, name: str, fd: int, size: int
) -> tuple[_Layout | None, _ShardPlan | None]:
    """The layout of chunk ``name``'s array (None: not encrypted) and, for a shard, its plan."""
    layout = _layout(_metadata(volume, meta_name))
    if layout is None:
        return None, None
    if layout.separator != "/":
        raise UnsupportedLayout(f"chunk key separator {layout.separator!r}")
    return layout, layout.plan(name, fd, size) if layout.sharded else None


@dataclass(frozen=True)
class _ShardPlan:
    """A stored shard's inner chunks in file order, and the served shard's index."""

    offsets: tuple[int, ...]
    lengths: tuple[int, ...]
    plain_starts: tuple[int, ...]
    """Where each inner chunk starts in the served shard (ascending)."""
    plain_ends: tuple[int, ...]
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

    def read(self, fd: int, stored: str, plan: _ShardPlan, start: int, stop: int) -> bytes:
        """Bytes ``start:stop`` of shard ``stored`` as served: the shard as zarr would have
        written it without the cipher (the same inner chunks in the same order, each 32 bytes
        shorter, then an index of their new offsets).  Only the inner chunks the range
        overlaps are read and decrypted; so the client's coalesced range reads
        (``ServiceStore``) work as on a clear volume.

        One ``pread`` and one decryption per inner chunk, joined once: small buffers that
        the allocator reuses.  (Reading the whole span at once and decrypting into one
        preallocated answer was measured 4x slower for a whole 11 MB shard: three large fresh
        buffers per request, each paid for in page faults.)"""
        parts: list[bytes] = []
        first = bisect.bisect_right(plan.plain_ends, start)
        for k in range(first, len(plan.offsets)):
            lo, hi = plan.plain_starts[k], plan.plain_ends[k]
            if lo >= stop:
                break
            sealed = os.pread(fd, plan.lengths[k], plan.offsets[k])
            if len(sealed) < plan.lengths[k]:
                raise _corrupt(self.key_id, stored, "shorter than its index says")
            plain = decrypt_chunk(self.key_id, self.salt, sealed)
            parts.append(
                plain[max(0, start - lo) : stop - lo] if start > lo or hi > stop else plain
            )
        data_end = plan.size - len(plan.index)
        if stop > data_end:
            parts.append(plan.index[max(0, start - data_end) : stop - data_end])
        return b"".join(parts)

    def plan(self, stored: str, fd: int, size: int) -> _ShardPlan:
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
        return _ShardPlan(
            tuple(offsets.tolist()),
            tuple(lengths.tolist()),
            tuple((plain_ends - plain_lengths).tolist()),
            tuple(plain_ends.tolist()),
            new_index,
            data + len(new_index),
        )

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
