"""Atomic, chunk-bounded conversion of one planned volume into a multiscale OME-Zarr.

The volume is streamed slab by slab (one level-0 shard deep): each slab is decoded, rescaled,
written to level 0, downsampled into every pyramid level and hashed.  Memory is a small multiple
of one slab whatever the volume size.  Everything is written under a temporary name; every file
the encoder handed to the store is hashed as it is written, read back and compared byte for byte
(sha256), and only then is the tree committed to its final name.  The volume's ``checksum``
(sha256 of the level-0 voxels, computed from the slabs before encoding) is what ``voxelhub fsck
--verify`` and readers check against the decoded data.
A crash at any point leaves at most a temporary tree that readers never see and
:meth:`~voxelhub.store.location.Location.clean_temporary` removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import WrapperStore

from voxelhub.dicom import colour
from voxelhub.dicom.pixels import DtypeChoice, DtypeOverflow, choose_dtype
from voxelhub.dicom.series import VolumePlan
from voxelhub.dicom.slabs import channels, read_slab, stored_shape, volume_shape
from voxelhub.errors import StoreError
from voxelhub.store import ngff, sidecar
from voxelhub.store.location import Location

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the ``voxelhub`` attribute block; bumped when its meaning changes."""


@dataclass(frozen=True)
class WrittenVolume:
    """What was committed: where, its shape, dtype, pyramid and content checksum."""

    rel_path: str
    shape: tuple[int, ...]
    dtype: str
    checksum: str
    levels: int
    nbytes: int
    timepoints: int = 1
    channels: int = 1
    """3 for a colour (RGB) volume, stored with a channel axis ``c``."""


class _Hasher:
    """sha256 over the level-0 voxels in C order, prefixed by dtype and shape."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self._h = hashlib.sha256(f"{np.dtype(dtype).str}{shape}".encode())

    def update(self, slab: np.ndarray) -> None:
        self._h.update(np.ascontiguousarray(slab).data)

    def hexdigest(self) -> str:
        return "sha256:" + self._h.hexdigest()


class _HashingStore(WrapperStore[Store]):
    """A store that remembers the sha256 of the last bytes written under every key."""

    def __init__(self, store: Store, written: dict[str, str] | None = None) -> None:
        super().__init__(store)
        self.written: dict[str, str] = {} if written is None else written

    def _with_store(self, store: Store) -> _HashingStore:
        return type(self)(store, self.written)

    async def set(self, key: str, value: Buffer) -> None:
        self.written[key] = hashlib.sha256(value.as_numpy_array().data).hexdigest()
        await self._store.set(key, value)

    async def delete(self, key: str) -> None:
        self.written.pop(key, None)
        await self._store.delete(key)


def content_checksum(array: zarr.Array, slab_depth: int = ngff.SLAB_DEPTH) -> str:
    """Checksum of a stored level-0 array, read slab by slab (same definition as when writing).

    A 4-D array is read one time point at a time, each slab by slab, in C order; a colour
    array's slabs hold all its channels, ``(c, slab, y, x)``.
    """
    shape = tuple(int(s) for s in array.shape)
    names = tuple(array.metadata.dimension_names or ())  # type: ignore[union-attr]
    timed = "t" in names if names else len(shape) == 4
    coloured = "c" in names
    hasher = _Hasher(shape, np.dtype(array.dtype))
    for t in range(shape[0]) if timed else [None]:
        nz = shape[-3]
        for z in range(0, nz, slab_depth):
            where: tuple[int | slice, ...] = (slice(z, z + slab_depth),)
            if coloured:
                where = (slice(None), *where)
            if t is not None:
                where = (t, *where)
            hasher.update(np.asarray(array[where]))
    return hasher.hexdigest()


def write_volume(
    location: Location,
    final_rel: str,
    plan: VolumePlan,
    *,
    name: str,
    attrs: dict[str, Any],
    pool: Executor | None = None,
    on_slab: Callable[[int], None] | None = None,
    encrypt_for: str | None = None,
    workers: int = 1,
) -> WrittenVolume:
    """Convert ``plan`` into an OME-Zarr at ``final_rel``, atomically.

    Parameters
    ----------
    location
        The store.
    final_rel
        Relative path the committed volume gets (replaced atomically if present).
    plan
        The volume's frames and geometry.
    name
        Image name in the NGFF metadata.
    attrs
        Extra JSON attributes (de-identified DICOM metadata, source UIDs …) stored under
        ``voxelhub``; geometry, dtype and checksum are added here.
    pool
        Executor used to decode the slices of each slab in parallel.
    on_slab
        Called with the number of slices done after each slab (progress bars).
    encrypt_for
        The project, if it is encrypted: every chunk is sealed with its current data key and
        the attributes that can carry PHI go into a sealed object (:mod:`voxelhub.store.sidecar`)
        instead of ``zarr.json``.
    workers
        Processes that convert the slabs (decode, rescale, level 0 and the pyramid's shards)
        of a volume of several slabs in parallel; each slab's shards belong to it alone.
    """
    choice = choose_dtype(plan.frames)
    args = (location, final_rel, plan)
    try:
        return _write(*args, choice, name, attrs, pool, on_slab, encrypt_for, workers)
    except DtypeOverflow as exc:
        log.info("%s: %s; rewriting as int32", plan.series_instance_uid, exc)
        wider = choose_dtype(plan.frames, wider=True)
        return _write(*args, wider, name, attrs, pool, on_slab, encrypt_for, workers)


def _write(
    location: Location,
    final_rel: str,
    plan: VolumePlan,
    choice: DtypeChoice,
    name: str,
    attrs: dict[str, Any],
    pool: Executor | None,
    on_slab: Callable[[int], None] | None,
    encrypt_for: str | None = None,
    workers: int = 1,
) -> WrittenVolume:
    codec = None
    if encrypt_for is not None:
        from voxelhub.store.encryption import codec_for

        codec = codec_for(encrypt_for)  # before anything is written: no key, no tree
        name = str(attrs.get("volume_uid") or "volume")  # the NGFF name is clear text too
    shape = volume_shape(plan)
    full_shape = stored_shape(plan)
    spacing = plan.geometry.spacing
    levels = ngff.pyramid(shape, spacing)
    n_t = plan.n_timepoints if plan.is_4d else None
    n_c = channels(plan)
    tmp = location.new_temporary()
    try:
        store = _HashingStore(location.zarr_store(tmp))
        group = zarr.open_group(store, mode="w-", zarr_format=3)
        arrays = [
            ngff.create_level_array(
                group, lv, choice.dtype, timepoints=n_t, channels=n_c, encryption=codec
            )
            for lv in levels
        ]
        hasher = _Hasher(full_shape, choice.dtype)
        slabs = _SlabWriter(plan, choice, levels, tmp, n_t, n_c)
        jobs = [
            (t, start, min(start + ngff.SLAB_DEPTH, shape[0]))
            for t in range(plan.n_timepoints)
            for start in range(0, shape[0], ngff.SLAB_DEPTH)
        ]
        slabs.attach(store, arrays)
        if workers > 1 and len(jobs) > 1 and _forks():
            _write_slabs_in_workers(slabs, location, jobs, workers, hasher, on_slab)
        else:
            for t, start, stop in jobs:
                hasher.update(slabs.write(t, start, stop, pool))
                if on_slab is not None:
                    on_slab(stop - start)
        checksum = hasher.hexdigest()
        time_step = None
        if n_t is not None:
            tr = plan.frames[0].repetition_time
            time_step = tr / 1000.0 if tr else 1.0
        labels = None if n_c is None else colour.CHANNELS[:n_c]
        ngff.write_metadata(
            group,
            levels,
            spacing,
            name,
            time_step=time_step,
            channels=labels,
            channel_max=float(np.iinfo(choice.dtype).max) if n_c is not None else 255.0,
        )
        meta = {
            **attrs,
            "format_version": FORMAT_VERSION,
            "geometry": plan.geometry.to_attrs(),
            "dtype": choice.dtype.str,
            "dtype_reason": choice.reason,
            "checksum": checksum,
            "levels": [{"path": lv.path, "shape": lv.shape, "factor": lv.factor} for lv in levels],
            "timepoints": [tp.to_attrs() for tp in plan.timepoints] if plan.is_4d else [],
        }
        if labels is not None:
            meta["channels"] = list(labels)
            meta["photometric_interpretation"] = plan.frames[0].photometric
        if codec is not None:
            meta, sealed = sidecar.split(meta, codec.key_id)
            sync(
                store.set(sidecar.SIDECAR_KEY, default_buffer_prototype().buffer.from_bytes(sealed))
            )
        group.attrs["voxelhub"] = meta
        _verify(location, tmp, store.written)
        location.commit(tmp, final_rel)
    except BaseException:
        location.remove(tmp)
        raise
    nbytes = int(np.prod(full_shape)) * choice.dtype.itemsize
    return WrittenVolume(
        final_rel,
        full_shape,
        choice.dtype.str,
        checksum,
        len(levels),
        nbytes,
        timepoints=plan.n_timepoints,
        channels=n_c or 1,
    )


class _SlabWriter:
    """Writes one slab (slices ``start:stop`` of time point ``t``) into level 0 and every
    pyramid level.  A slab fills whole shards at every level (a level-0 shard is one slab
    deep, a level's shard the slab's share of it), so slabs can be written by different
    processes at once without touching each other's files."""

    def __init__(
        self,
        plan: VolumePlan,
        choice: DtypeChoice,
        levels: list[ngff.Level],
        tmp: str,
        n_t: int | None,
        n_c: int | None,
    ) -> None:
        self.plan, self.choice, self.levels, self.tmp = plan, choice, levels, tmp
        self.n_t, self.n_c = n_t, n_c
        self.store: _HashingStore | None = None
        self.arrays: list[zarr.Array] = []

    def attach(self, store: _HashingStore, arrays: list[zarr.Array] | None = None) -> None:
        """Write through ``store`` (its arrays opened from the tree when not given)."""
        if arrays is None:
            arrays = [zarr.open_array(store, path=lv.path, zarr_format=3) for lv in self.levels]
        self.store, self.arrays = store, arrays

    def max_slab_bytes(self) -> int:
        """Bytes of the largest slab (one slab deep, every channel)."""
        _, ny, nx = volume_shape(self.plan)
        return ngff.SLAB_DEPTH * ny * nx * (self.n_c or 1) * self.choice.dtype.itemsize

    def write(self, t: int, start: int, stop: int, pool: Executor | None = None) -> np.ndarray:
        """Decode, rescale and write one slab with its pyramid; returns the level-0 slab."""
        lead: tuple[int | slice, ...] = () if self.n_t is None else (t,)
        if self.n_c is not None:
            lead = (*lead, slice(None))  # every channel of the slab at once
        slab = read_slab(self.plan, start, stop, self.choice, t=t, pool=pool)
        self.arrays[0][(*lead, slice(start, stop))] = slab
        small, previous = slab, self.levels[0].factor
        for lv, arr in zip(self.levels[1:], self.arrays[1:], strict=True):
            # each level from the one above it: a 2× step, not a 2^k one from level 0
            step = tuple(f // p for f, p in zip(lv.factor, previous, strict=True))
            small, previous = _downsample(small, step, self.n_c), lv.factor  # type: ignore[arg-type]
            z0 = start // lv.factor[0]
            arr[(*lead, slice(z0, z0 + small.shape[0]))] = small
        return slab


def _forks() -> bool:
    """Whether pool processes are forked, which the slab pool needs (it shares memory)."""
    from voxelhub.dicom.index import process_context

    return process_context().get_start_method() == "fork"


# Set in each process of a slab pool (fork copies it: nothing is pickled).
_worker_slabs: _SlabWriter | None = None
_worker_slots: mmap.mmap | None = None


def _init_slab_worker(slabs: _SlabWriter, location: Location, slots: mmap.mmap) -> None:
    global _worker_slabs, _worker_slots
    slabs.attach(_HashingStore(location.zarr_store(slabs.tmp)))
    _worker_slabs, _worker_slots = slabs, slots


def _slot(slots: mmap.mmap, k: int, size: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Slot ``k`` of the shared slab buffer, as an array of ``shape``."""
    count = int(np.prod(shape))
    return np.frombuffer(slots, dtype=dtype, count=count, offset=k * size).reshape(shape)


def _write_slab_in_worker(
    t: int, start: int, stop: int, k: int, size: int
) -> tuple[tuple[int, ...], dict[str, str]]:
    """One slab written by a pool process.  The slab goes into shared slot ``k`` for the
    parent's in-order checksum (a copy, where pickling it back cost more than writing it);
    returned: its shape and the sha256 of every file written, for the parent's verification."""
    assert _worker_slabs is not None and _worker_slabs.store is not None
    assert _worker_slots is not None
    written = _worker_slabs.store.written
    written.clear()
    slab = _worker_slabs.write(t, start, stop)
    np.copyto(_slot(_worker_slots, k, size, slab.shape, slab.dtype), slab)
    return slab.shape, dict(written)


def _write_slabs_in_workers(
    slabs: _SlabWriter,
    location: Location,
    jobs: list[tuple[int, int, int]],
    workers: int,
    hasher: _Hasher,
    on_slab: Callable[[int], None] | None,
) -> None:
    """Write ``jobs`` (slabs) here and in ``workers - 1`` forked processes, hashing the slabs
    here in order.

    Slab ``i`` is this process's when ``i % workers == 0`` (it would otherwise only wait), the
    pool's else.  At most ``workers`` pool slabs are in flight, each with its slot in an
    anonymous shared mapping, so memory stays a few slabs whatever the volume's size.  An
    error in any slab (a DtypeOverflow too) stops the pool before it is raised, so no process
    is still writing when the caller removes the temporary tree.
    """
    from concurrent.futures import Future, ProcessPoolExecutor

    from voxelhub.dicom.index import process_context

    assert slabs.store is not None
    ours = {i for i in range(len(jobs)) if i % workers == 0}
    theirs = deque(i for i in range(len(jobs)) if i not in ours)
    n_slots = workers
    size = slabs.max_slab_bytes()
    slots = mmap.mmap(-1, n_slots * size)  # MAP_SHARED: the forked workers write into it
    pool = ProcessPoolExecutor(
        min(workers - 1, len(theirs)),
        mp_context=process_context(),
        initializer=_init_slab_worker,
        initargs=(slabs, location, slots),
    )
    dtype = slabs.choice.dtype
    free = deque(range(n_slots))
    pending: dict[int, tuple[int, Future[tuple[tuple[int, ...], dict[str, str]]]]] = {}

    def submit() -> None:
        while theirs and free:
            i, k = theirs.popleft(), free.popleft()
            pending[i] = (k, pool.submit(_write_slab_in_worker, *jobs[i], k, size))

    try:
        submit()
        for i, (t, start, stop) in enumerate(jobs):
            if i in ours:
                hasher.update(slabs.write(t, start, stop))
            else:
                k, future = pending.pop(i)
                shape, written = future.result()
                hasher.update(_slot(slots, k, size, shape, dtype))
                slabs.store.written.update(written)
                free.append(k)
            submit()
            if on_slab is not None:
                on_slab(stop - start)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(BufferError):  # a view kept by a traceback: freed with it
            slots.close()


def _downsample(block: np.ndarray, step: tuple[int, int, int], n_c: int | None) -> np.ndarray:
    """One pyramid step of a slab; a colour slab's channels are each downsampled in z, y, x."""
    if n_c is None:
        return ngff.downsample(block, step)
    return np.stack([ngff.downsample(channel, step) for channel in block])


def _verify(location: Location, rel: str, written: dict[str, str]) -> None:
    """Read every file of the written tree back and compare it with the bytes zarr wrote.

    This checks that the store holds exactly the bytes the encoder produced, at the speed of
    hashing compressed files (the issue measured ≈ 6× faster than decoding level 0 again and
    hashing the voxels, which is what ``voxelhub fsck --verify`` still does).  It does not
    decode them: a codec that encodes wrongly would pass here and fail ``fsck --verify``.
    """
    store = location.zarr_store(rel, read_only=True)
    prototype = default_buffer_prototype()

    async def digest(key: str) -> str | None:
        found = await store.get(key, prototype=prototype)
        return None if found is None else hashlib.sha256(found.as_numpy_array().data).hexdigest()

    for key in sorted(written):  # one file at a time: memory stays one shard, not the volume
        found = sync(digest(key))
        if found != written[key]:
            what = "missing" if found is None else f"sha256 {found}, wrote {written[key]}"
            raise StoreError(f"verification failed for {location.url_of(rel)}/{key}: {what}")
