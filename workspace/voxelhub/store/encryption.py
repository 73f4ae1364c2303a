"""AES-256-GCM for every stored chunk: a zarr v3 bytes-to-bytes codec, after compression.

Each inner chunk (inside a shard: never around one, or partial reads would be impossible) is
stored as ``b"VHE1" | nonce (12) | ciphertext | tag (16)``.  ``zarr.json`` records only the data
key's id and a random per-array salt; the chunk key is ``HKDF-SHA256(data key, salt)``, and the
additional data binds each chunk to that id and salt.  So:

- without the key, reads fail with :class:`~voxelhub.store.keys.MissingKey` naming the key id;
- a flipped bit fails with :class:`CorruptChunk`, never comes back as voxels;
- the codec object carries no key: a pickled ``zarr.Array`` (what Dask ships) holds none, and a
  process only decrypts if it was given a :class:`~voxelhub.store.keys.KeyRing` with
  :func:`use_keys` (the data service and the ingest path; never users' kernels or workers).

The design and its measured cost (+2 % write, +12 % read CPU) are in ``../shared/notes/storage.md``
(section 3), whose prototype this follows.  What stays clear text: ``zarr.json`` (shapes, the
NGFF block; no PHI may go there) and shard indexes (chunk sizes).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from zarr.abc.codec import BytesBytesCodec
from zarr.core.buffer import Buffer
from zarr.core.common import parse_named_configuration
from zarr.registry import register_codec

from voxelhub.errors import StoreError
from voxelhub.store.keys import KeyRing, MissingKey

CODEC_NAME = "voxelhub.aes256gcm"
MAGIC = b"VHE1"
NONCE_BYTES, TAG_BYTES = 12, 16
OVERHEAD = len(MAGIC) + NONCE_BYTES + TAG_BYTES
INLINE_BYTES = 1 << 20
"""Chunks up to this size are sealed and opened on zarr's event loop rather than in a thread."""

_ring: KeyRing | None = None
_ring_lock = threading.Lock()


class CorruptChunk(StoreError):
    """A stored chunk failed authentication: changed on disk, truncated, or from another array."""


def use_keys(ring: KeyRing | None) -> None:
    """Let this process encrypt and decrypt with ``ring`` (None: forget every key)."""
    global _ring
    with _ring_lock:
        _ring = ring
        _chunk_cipher.cache_clear()


def keys_in_use() -> KeyRing | None:
    return _ring


@lru_cache(maxsize=256)
def _chunk_cipher(key_id: str, salt: str) -> AESGCM:
    ring = _ring
    if ring is None:
        raise MissingKey(
            f"this volume is encrypted with data key {key_id} and this process holds no keys: "
            f"read it through the data service, or open the store with its master key file"
        )
    data_key = ring.data_key(key_id)
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=bytes.fromhex(salt), info=MAGIC
    ).derive(data_key)
    return AESGCM(derived)


def decrypt_chunk(key_id: str, salt: str, data: bytes | memoryview) -> bytes:
    """The plaintext of one stored chunk (what the codec decodes; the data service calls it
    directly to serve an inner chunk of a shard without decoding the rest).  ``data`` is any
    bytes-like object: a view into a larger read is not copied."""
    nonce, sealed = _parts(key_id, data)
    try:
        return _chunk_cipher(key_id, salt).decrypt(nonce, sealed, _aad(key_id, salt))
    except InvalidTag:
        raise _failed(key_id) from None


def decrypt_chunk_into(
    key_id: str, salt: str, data: bytes | memoryview, out: memoryview | bytearray
) -> None:
    """:func:`decrypt_chunk` written into ``out`` (exactly ``len(data) - OVERHEAD`` bytes):
    the data service assembles a served shard this way, with no copy per inner chunk.  Nothing
    in ``out`` is to be trusted when it raises."""
    nonce, sealed = _parts(key_id, data)
    try:
        _chunk_cipher(key_id, salt).decrypt_into(nonce, sealed, _aad(key_id, salt), out)
    except InvalidTag:
        raise _failed(key_id) from None


def _parts(key_id: str, data: bytes | memoryview) -> tuple[memoryview, memoryview]:
    """``(nonce, ciphertext and tag)`` of a stored chunk, as views (no copy)."""
    view = memoryview(data).cast("B")
    if view.nbytes < OVERHEAD or view[: len(MAGIC)] != MAGIC:
        raise CorruptChunk(
            f"a chunk of an array encrypted with data key {key_id} is not an encrypted "
            f"chunk ({view.nbytes} bytes): the store was changed outside VoxelHub"
        )
    start = len(MAGIC)
    return view[start : start + NONCE_BYTES], view[start + NONCE_BYTES :]


def _failed(key_id: str) -> CorruptChunk:
    return CorruptChunk(
        f"a chunk encrypted with data key {key_id} failed authentication: it was "
        f"changed or damaged on disk (restore it from a backup)"
    )


@lru_cache(maxsize=1024)
def _aad(key_id: str, salt: str) -> bytes:
    """The additional data every chunk of an array is bound to (cached: built per chunk)."""
    return MAGIC + key_id.encode() + b"\0" + salt.encode()


SEALED_MAGIC = b"VHS1"
"""Start of a sealed object (attributes moved out of ``zarr.json``), never of a chunk."""


def seal(key_id: str, plaintext: bytes) -> bytes:
    """Encrypt a small object (a volume's private attributes) under data key ``key_id``.

    Layout: ``VHS1 | key id (16 hex) | salt (32 hex) | nonce | ciphertext | tag``; the key id
    and salt are bound as additional data, so a chunk cannot pass for a sealed object."""
    salt = os.urandom(16).hex()
    nonce = os.urandom(NONCE_BYTES)
    head = SEALED_MAGIC + key_id.encode() + b"\0" + salt.encode() + b"\0"
    return head + nonce + _chunk_cipher(key_id, salt).encrypt(nonce, plaintext, head)


def unseal(blob: bytes) -> bytes:
    """The plaintext of :func:`seal`; :class:`MissingKey` naming the key, or
    :class:`CorruptChunk` if the object was changed."""
    parts = blob.split(b"\0", 2) if blob.startswith(SEALED_MAGIC) else []
    if len(parts) != 3 or len(parts[2]) < NONCE_BYTES + TAG_BYTES:
        raise CorruptChunk("an encrypted attributes object is malformed: changed on disk?")
    key_id, salt = parts[0][len(SEALED_MAGIC) :].decode(), parts[1].decode()
    head = len(parts[0]) + len(parts[1]) + 2
    body = parts[2]
    try:
        return _chunk_cipher(key_id, salt).decrypt(
            body[:NONCE_BYTES], body[NONCE_BYTES:], blob[:head]
        )
    except InvalidTag:
        raise CorruptChunk(
            f"the encrypted attributes (data key {key_id}) failed authentication: changed or "
            f"damaged on disk (restore them from a backup)"
        ) from None


def open_store_keys(location: Any, key_file: str | os.PathLike[str] | None = None) -> KeyRing:
    """Give this process (and the workers it forks) the key ring of a store, opened with
    ``key_file`` (default ``$VOXELHUB_KEY_FILE``); the ring already in use if it is that one.

    A local store keeps the ring in ``<store>/.keys/`` (0700, files 0600); a store on object
    storage (``s3://bucket/store``) in ``<store>/.keys/`` of the bucket: only wrapped keys are
    there, useless without the master key file, which never goes into the bucket."""
    from voxelhub import config
    from voxelhub.store.keys import KEYS_FOLDER, FileKeyProvider
    from voxelhub.store.location import LocalLocation

    root = getattr(location, "root", None)
    if root is None or getattr(location, "fs", None) is None:
        raise StoreError(
            f"{location.url_of('')} holds no key ring: encrypted projects are read through the "
            f"data service, or where the store is (its folder or bucket) with the master key"
        )
    path = key_file or config.key_file()
    if path is None:
        raise MissingKey(
            f"an encrypted project needs the master key file: set ${config.KEY_FILE_ENV} or "
            f"pass --key-file"
        )
    local = isinstance(location, LocalLocation)
    folder = os.path.join(str(root), KEYS_FOLDER) if local else f"{root}/{KEYS_FOLDER}"
    ring = _ring
    if ring is None or str(ring.folder) != folder or (ring.files is None) != local:
        ring = KeyRing(folder, FileKeyProvider(path), files=None if local else location)
        use_keys(ring)
    return ring


def codec_for(project: str) -> Aes256GcmCodec:
    """The codec new arrays of an encrypted ``project`` get: its current data key (made on the
    project's first write); :class:`MissingKey` if this process was given no keys."""
    ring = _ring
    if ring is None:
        raise MissingKey(
            f"project {project!r} is encrypted and this process holds no keys: give the master "
            f"key file ($VOXELHUB_KEY_FILE, or --key-file)"
        )
    return Aes256GcmCodec(key_id=ring.current(project))


@dataclass(frozen=True)
class Aes256GcmCodec(BytesBytesCodec):
    """Encrypts each chunk with its array's key (``key_id`` of a data key, random ``salt``)."""

    is_fixed_size = True
    key_id: str = ""
    salt: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Aes256GcmCodec:
        _, config = parse_named_configuration(data, CODEC_NAME)
        config = config or {}
        return cls(key_id=str(config.get("key_id", "")), salt=str(config.get("salt", "")))

    def to_dict(self) -> dict[str, Any]:
        return {"name": CODEC_NAME, "configuration": {"key_id": self.key_id, "salt": self.salt}}

    def evolve_from_array_spec(self, array_spec: Any) -> Aes256GcmCodec:
        if not self.key_id:
            raise MissingKey("an encrypted array needs the id of a data key (KeyRing.current)")
        return self if self.salt else replace(self, salt=os.urandom(16).hex())

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: Any) -> int:
        return input_byte_length + OVERHEAD

    def _encode_sync(self, chunk: Buffer, spec: Any) -> Buffer:
        # sealed straight into the stored layout: no copy of the plaintext or the ciphertext
        plain = chunk.as_numpy_array().data.cast("B")
        out = np.empty(plain.nbytes + OVERHEAD, dtype=np.uint8)
        nonce = os.urandom(NONCE_BYTES)
        head = len(MAGIC) + NONCE_BYTES
        out[:head] = np.frombuffer(MAGIC + nonce, dtype=np.uint8)
        _chunk_cipher(self.key_id, self.salt).encrypt_into(
            nonce, plain, _aad(self.key_id, self.salt), out.data[head:]
        )
        return spec.prototype.buffer.from_array_like(out)

    def _decode_sync(self, chunk: Buffer, spec: Any) -> Buffer:
        sealed = chunk.as_numpy_array()  # a view of the bytes read: not copied
        plain = np.empty(sealed.nbytes - OVERHEAD if sealed.nbytes >= OVERHEAD else 0, np.uint8)
        decrypt_chunk_into(self.key_id, self.salt, sealed.data, plain.data)
        return spec.prototype.buffer.from_array_like(plain)

    async def decode(
        self, chunks_and_specs: Iterable[tuple[Buffer | None, Any]]
    ) -> Iterable[Buffer | None]:
        # a batch (a shard's inner chunks) in one trip to a thread, not one per chunk, and off
        # zarr's event loop, which meanwhile reads and hands out the other shards
        batch = list(chunks_and_specs)
        if sum(len(c) for c, _ in batch if c is not None) <= INLINE_BYTES:
            return self._decode_batch(batch)
        return await asyncio.to_thread(self._decode_batch, batch)

    def _decode_batch(self, batch: list[tuple[Buffer | None, Any]]) -> list[Buffer | None]:
        return [None if c is None else self._decode_sync(c, spec) for c, spec in batch]

    async def _encode_single(self, chunk: Buffer, spec: Any) -> Buffer:
        # as for decoding: a small chunk is sealed faster than a hop to a thread (level 0 of
        # the phantom written (blosc lz4), 21 interleaved runs: +11 % over the clear write
        # inline, +23 % in a thread per chunk; one thread per batch was no better)
        if len(chunk) <= INLINE_BYTES:
            return self._encode_sync(chunk, spec)
        return await asyncio.to_thread(self._encode_sync, chunk, spec)

    async def _decode_single(self, chunk: Buffer, spec: Any) -> Buffer:
        # an inner chunk (≤ 128 KiB here) decrypts in ~0.1 ms: less than a hop to a thread
        # (measured: level 0 of a 140-slice CT read 8 % faster inline); big ones go to a thread
        if len(chunk) <= INLINE_BYTES:
            return self._decode_sync(chunk, spec)
        return await asyncio.to_thread(self._decode_sync, chunk, spec)


register_codec(CODEC_NAME, Aes256GcmCodec)
