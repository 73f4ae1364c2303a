"""Reading sharded arrays through the data service in a few requests instead of one per chunk.

zarr-python 3.1 (pinned ``<3.2``) reads the inner chunks of a partly read shard one after the
other, one ``await`` per chunk (``zarr/codecs/sharding.py``, ``_decode_partial_single``): on
local disk each is a ``pread``, through the data service each is an HTTP round trip, so a slice
viewer band (64–75 inner chunks) cost 64–75 sequential requests.  zarr-python 3.2 (PR #3004)
coalesces and parallelises them; until we can move to it, two small pieces do the same for
arrays read through :class:`~voxelhub.store.location.ServiceLocation` only:

* :class:`ServiceStore` wraps the HTTP store and fetches a list of byte ranges of one key at
  once: ranges closer than :attr:`ServiceStore.max_gap` bytes are merged into one request (the
  gap is read and dropped), at most :attr:`ServiceStore.max_request` bytes each, and the
  requests run concurrently (at most :attr:`ServiceStore.concurrency` at a time).
* :class:`CoalescingShardingCodec` is zarr's sharding codec with a different partial read
  when the shard's store is a :class:`ServiceStore`: it reads the shard index, asks the store
  for every needed inner chunk in one :meth:`ServiceStore.get_ranges` call, and hands zarr's
  own decoding a byte getter that answers from those bytes.  With any other store (a local
  folder, S3) it is zarr's codec unchanged.  :func:`install` selects it for the
  ``sharding_indexed`` codec name (zarr's documented ``codecs.<name>`` setting);
  ``ServiceLocation`` calls it, so only processes that read through the service use it.

Why not fetch whole shards and serve ranges from a cache?  A VoxelHub level-0 shard is one
64-slice slab (about 16 MB for a 512² CT); the chunks of an axial band are spread over the
whole shard (zarr stores a shard's chunks in Morton order), so a cold band would move 4–8 times
the bytes it needs.  ``benchmarks/service.py`` measured both (README, "service.py").
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import zarr
from zarr.abc.store import ByteGetter, ByteRequest, RangeByteRequest, Store
from zarr.codecs.sharding import ShardingCodec
from zarr.core.buffer import Buffer, BufferPrototype, NDBuffer
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.indexing import SelectorTuple, get_indexer
from zarr.storage import WrapperStore

_CODEC_NAME = "sharding_indexed"
_CODEC_PATH = f"{__name__}.CoalescingShardingCodec"


class ServiceStore(WrapperStore[Store]):
    """A read-only store over the data service that can fetch many ranges of a key at once."""

    max_gap: int = 256 * 1024
    """Merge two ranges of a key into one request when at most this many bytes lie between
    (256 KiB: a few inner chunks of a VoxelHub shard; ``benchmarks/service.py`` found it faster
    for cold viewer slices than 64 KiB, than no merging and than one request for the span)."""
    max_request: int = 8 * 2**20
    """Never merge ranges into a request larger than this many bytes."""
    concurrency: int = 8
    """Requests of one :meth:`get_ranges` call in flight at once."""

    def __init__(
        self,
        store: Store,
        *,
        max_gap: int | None = None,
        max_request: int | None = None,
        concurrency: int | None = None,
    ) -> None:
        super().__init__(store)
        if max_gap is not None:
            self.max_gap = int(max_gap)
        if max_request is not None:
            self.max_request = int(max_request)
        if concurrency is not None:
            self.concurrency = max(1, int(concurrency))
        self.requests = 0
        """HTTP range requests made by :meth:`get_ranges` (tests, benchmarks)."""

    def _with_store(self, store: Store) -> ServiceStore:
        copy = type(self)(store)
        for name in ("max_gap", "max_request", "concurrency"):  # what was set on this one only
            if name in vars(self):
                setattr(copy, name, vars(self)[name])
        return copy

    def __repr__(self) -> str:
        return f"ServiceStore({self._store!r})"

    def plan(self, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The requests that cover ``ranges`` (``(start, stop)``, stop exclusive), merged."""
        merged: list[tuple[int, int]] = []
        for start, stop in sorted(set(ranges)):
            if merged:
                first, last = merged[-1]
                if start - last <= self.max_gap and max(stop, last) - first <= self.max_request:
                    merged[-1] = (first, max(stop, last))
                    continue
            merged.append((start, stop))
        return merged

    async def get_ranges(
        self, key: str, ranges: list[tuple[int, int]], prototype: BufferPrototype
    ) -> dict[tuple[int, int], Buffer]:
        """The bytes of every ``(start, stop)`` range of ``key``, fetched in merged, concurrent
        requests; a range whose request found nothing (a missing key) is left out."""
        limit = asyncio.Semaphore(self.concurrency)

        async def fetch(span: tuple[int, int]) -> tuple[tuple[int, int], Buffer | None]:
            async with limit:
                self.requests += 1
                got = await self._store.get(key, prototype, RangeByteRequest(*span))
            return span, got

        fetched = await asyncio.gather(*(fetch(span) for span in self.plan(ranges)))
        spans = sorted((span, buf) for span, buf in fetched if buf is not None)
        out: dict[tuple[int, int], Buffer] = {}
        for start, stop in ranges:
            for (first, last), buf in spans:
                if first <= start and stop <= last:
                    out[(start, stop)] = buf[start - first : stop - first]
                    break
        return out


@dataclass
class _Prefetched:
    """A byte getter that answers from bytes already fetched, and asks ``getter`` otherwise."""

    getter: ByteGetter
    known: dict[ByteRequest | None, Buffer | None] = field(default_factory=dict)

    async def get(
        self, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if byte_range in self.known:
            return self.known[byte_range]
        return await self.getter.get(prototype, byte_range)


@dataclass
class _Remembering:
    """A byte getter that keeps what it was answered (the shard index, read once)."""

    getter: ByteGetter
    seen: dict[ByteRequest | None, Buffer | None] = field(default_factory=dict)

    async def get(
        self, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        got = await self.getter.get(prototype, byte_range)
        self.seen[byte_range] = got
        return got


class CoalescingShardingCodec(ShardingCodec):
    """zarr's sharding codec; through a :class:`ServiceStore`, a partial shard read asks for all
    its inner chunks at once instead of one request after the other."""

    async def _decode_partial_single(
        self, byte_getter: Any, selection: SelectorTuple, shard_spec: Any
    ) -> NDBuffer | None:
        store = getattr(byte_getter, "store", None)
        if not isinstance(store, ServiceStore):
            return await super()._decode_partial_single(byte_getter, selection, shard_spec)
        chunks_per_shard = self._get_chunks_per_shard(shard_spec)
        indexer = get_indexer(
            selection,
            shape=shard_spec.shape,
            chunk_grid=RegularChunkGrid(chunk_shape=self.chunk_shape),
        )
        coords = {chunk_coords for chunk_coords, *_ in indexer}
        if self._is_total_shard(coords, chunks_per_shard):  # one GET already
            return await super()._decode_partial_single(byte_getter, selection, shard_spec)
        remembering = _Remembering(byte_getter)
        index = await self._load_shard_index_maybe(remembering, chunks_per_shard)
        if index is None:
            return None
        wanted = [s for s in (index.get_chunk_slice(c) for c in coords) if s]
        got = await store.get_ranges(
            str(byte_getter.path), wanted, self._get_chunk_spec(shard_spec).prototype
        )
        known: dict[ByteRequest | None, Buffer | None] = dict(remembering.seen)
        known.update({RangeByteRequest(a, b): buf for (a, b), buf in got.items()})
        return await super()._decode_partial_single(
            _Prefetched(byte_getter, known), selection, shard_spec
        )


def install() -> None:
    """Select :class:`CoalescingShardingCodec` for ``sharding_indexed`` arrays opened from now
    on in this process (it behaves as zarr's own codec unless the store is a ServiceStore)."""
    if zarr.config.get(f"codecs.{_CODEC_NAME}", None) == _CODEC_PATH:
        return
    zarr.registry.register_codec(_CODEC_NAME, CoalescingShardingCodec)
    zarr.config.set({f"codecs.{_CODEC_NAME}": _CODEC_PATH})
