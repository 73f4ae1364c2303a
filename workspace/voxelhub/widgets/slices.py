"""SliceViewer: three orthogonal planes of a lazy volume, drawn on canvases in the browser.

Why an anywidget (ES module + ``<canvas>``) and not ipywidgets ``Image`` / ipycanvas
------------------------------------------------------------------------------------------
Window/level, overlay opacity, crosshair and the value under the pointer are browser-only
operations here: the kernel sends each slice **once**, as its raw voxel values (``int16`` for
CT, a few hundred kB for 512²) in a binary comm buffer, and the ES module maps them to grey
levels, blends the labels and draws.  With ``ipywidgets.Image`` (or ipycanvas
``put_image_data``) every window change and every overlay change is a kernel round trip that
re-encodes an RGB image (PNG, or 3 bytes per pixel), and the value under the pointer needs one
more round trip; with the canvas module a window drag costs no kernel work at all, and
scrolling costs one slice read.  ipycanvas also adds a JupyterLab extension; anywidget ships
its JavaScript inside this package.  ``benchmarks/viewer.py`` measures the result in a real
browser.

Lazy access and the band cache
------------------------------
The browser asks for one slice at a time (``{"type": "slice", "axis", "index"}``); the kernel
answers first from the finest pyramid level that fits the display and then from full
resolution.  A slice is cut from a **band**: the block of the store's chunk grid that the slice
crosses, whole in-plane — for an axial slice the z-block of one inner chunk depth (16 slices
on a VoxelHub store), for a coronal or sagittal slice the band one chunk high or wide (64 rows
or columns) across every z.  A band is read with one chunk-aligned ``array[region]`` straight
from the zarr array under the dask graph (no per-slice dask graph: its overhead is
milliseconds per small read; other dask arrays are computed with the synchronous scheduler so
that a slice never travels to a cluster), so it costs what its chunks cost to decode, and the
next slices of a scroll come from memory.  Bands live in a least-recently-used cache bounded by
:attr:`SliceViewer.cache_bytes` (256 MiB by default); a band larger than the budget is never
cached (the slice alone is read), so a 1 GB volume is never held whole.  While the user scrolls,
a background thread reads the next band in the direction of travel (:attr:`prefetch`).

On opening, the browser asks for the three planes' previews (``"full": false``) before their
full-resolution slices, so that every plane shows something after three small reads.  After
that, the browser keeps at most one request per plane in flight and asks for the newest position
when an answer arrives, so fast scrolling skips slices instead of queueing them.  The preview
level is asked for on a plane's first slice and whenever the last full-resolution slice took
more than 60 ms (a slow or remote store), and skipped by the kernel when the full-resolution
band is already in memory.  Slices travel as raw bytes in comm buffers (never JSON); the
browser maps them through a lookup table into an ``ImageData`` it reuses, and a crosshair move
only re-composes the planes (no pixel work).
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anywidget
import numpy as np
import traitlets as t
import xarray as xr

from voxelhub.store.ngff import label_indices, sample_labels
from voxelhub.widgets.pyramid import (
    PyramidLevel,
    finest_fitting,
    levels_of,
    mask_levels,
    resolve,
)

log = logging.getLogger(__name__)

STATIC = pathlib.Path(__file__).parent / "static"

PALETTE = (
    "#e6194b",
    "#3cb44b",
    "#ffe119",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#46f0f0",
    "#f032e6",
    "#bcf60c",
    "#fabebe",
)
"""Default label colours: label ``n`` gets ``PALETTE[(n - 1) % 10]`` unless ``label_colors`` says."""

_IN_PLANE = ((1, 2), (0, 2), (0, 1))
"""The (rows, columns) axes of the plane perpendicular to axis 0 (z), 1 (y) and 2 (x)."""

_WIRE_DTYPES = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "float32"}
CACHE_BYTES = 256 * 2**20
"""Default budget of the band cache (:attr:`SliceViewer.cache_bytes`)."""


class BandCache:
    """Decoded bands, least recently used first out, never more than ``budget`` bytes.

    Thread-safe: the prefetch thread fills it while the comm handler reads from it.
    ``peak`` is the most bytes ever held (tests check it against the budget).
    """

    def __init__(self, budget: int) -> None:
        self.budget = int(budget)
        self.nbytes = 0
        self.peak = 0
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
            return arr

    def put(self, key: Hashable, arr: np.ndarray) -> bool:
        """Keep ``arr`` (evicting the oldest bands); False when it alone exceeds the budget."""
        with self._lock:
            if arr.nbytes > self.budget:
                return False
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            while self._items and self.nbytes + arr.nbytes > self.budget:
                _, evicted = self._items.popitem(last=False)
                self.nbytes -= evicted.nbytes
            self._items[key] = arr
            self.nbytes += arr.nbytes
            self.peak = max(self.peak, self.nbytes)
            return True

    def resize(self, budget: int) -> None:
        with self._lock:
            self.budget = int(budget)
            while self._items and self.nbytes > self.budget:
                _, evicted = self._items.popitem(last=False)
                self.nbytes -= evicted.nbytes


@dataclass(frozen=True)
class _Source:
    """What a band is read from: an array with numpy-style ``[region]`` reads, and its chunks."""

    array: Any
    shape: tuple[int, int, int]
    block: tuple[int, int, int]
    """Chunk shape the bands align to (the store's inner chunks for a zarr array)."""
    in_memory: bool = False
    """A numpy array: slices are cut directly, nothing is cached."""


class _DaskRegion:
    """``[region]`` on a dask array, computed with the synchronous scheduler."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.data[key].compute(scheduler="sync"))


def _int_chunks(chunks: Any) -> tuple[int, int, int] | None:
    if isinstance(chunks, tuple) and len(chunks) == 3 and all(isinstance(c, int) for c in chunks):
        return (int(chunks[0]), int(chunks[1]), int(chunks[2]))
    return None


def _dask_origin(data: Any) -> Any:
    """The array a ``da.from_array`` / ``da.from_zarr`` graph reads from, if that is all it does."""
    layers = getattr(getattr(data, "dask", None), "layers", None)
    if not layers or len(layers) != 2 or data.name not in layers:
        return None
    (original,) = (name for name in layers if name != data.name)
    if not str(original).startswith("original-"):
        return None
    values = list(layers[original].values())
    if len(values) != 1:
        return None
    base = values[0]
    if tuple(getattr(base, "shape", ())) != tuple(data.shape) or not hasattr(base, "__getitem__"):
        return None
    return base


def _source_of(data: Any) -> _Source:
    shape = tuple(int(s) for s in data.shape)
    shape3 = (shape[0], shape[1], shape[2])
    if isinstance(data, np.ndarray):
        return _Source(data, shape3, shape3, in_memory=True)
    chunks = getattr(data, "chunks", None)
    if chunks is not None and not _int_chunks(chunks) and hasattr(data, "dask"):
        dask_block = (int(chunks[0][0]), int(chunks[1][0]), int(chunks[2][0]))
        base = _dask_origin(data)
        if base is not None:
            block = _int_chunks(getattr(base, "chunks", None)) or dask_block
            return _Source(base, shape3, block)
        return _Source(_DaskRegion(data), shape3, dask_block)
    # a zarr array or any other array-like with numpy-style reads
    return _Source(data, shape3, _int_chunks(chunks) or shape3)


def _band_bounds(src: _Source, axis: int, band: int) -> tuple[int, int]:
    """First and last + 1 index along ``axis`` of chunk band ``band``."""
    step = src.block[axis]
    return band * step, min((band + 1) * step, src.shape[axis])


def _wire(arr: Any) -> np.ndarray:
    """``arr`` as a little-endian array of a dtype the browser decodes."""
    out = np.asarray(arr)
    if out.dtype.name not in _WIRE_DTYPES:
        out = out.astype(np.float32)
    return out.astype(out.dtype.newbyteorder("<"), copy=False)


_prefetcher: ThreadPoolExecutor | None = None
_prefetcher_lock = threading.Lock()


def _prefetch_pool() -> ThreadPoolExecutor:
    """One background reader for every viewer in the kernel (reads are I/O and decode bound)."""
    global _prefetcher
    with _prefetcher_lock:
        if _prefetcher is None:
            _prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxelhub-prefetch")
        return _prefetcher


def plane_names(affine_lps: Any) -> list[str]:
    """Anatomical name of the plane perpendicular to each index axis (z, y, x).

    The plane is named after the patient axis its normal is closest to: L/R sagittal,
    A/P coronal, S/I axial.
    """
    a = np.asarray(affine_lps, dtype=float)[:3, :3]
    names = []
    for col in (2, 1, 0):  # index axes z, y, x are affine columns 2, 1, 0
        normal = np.abs(a[:, col])
        names.append(("sagittal", "coronal", "axial")[int(np.argmax(normal))])
    return names


def auto_window(values: Any, percentiles: tuple[float, float] = (1.0, 99.0)) -> tuple[float, float]:
    """(centre, width) spanning the given percentiles of ``values`` (MR, or any modality)."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(arr, percentiles)
    width = float(hi - lo) or 1.0
    return float(lo + width / 2), width


class SliceViewer(anywidget.AnyWidget):
    """Axial, coronal and sagittal planes with crosshair, window/level and label overlays.

    Build one with :func:`voxelhub.widgets.view` (or :meth:`from_volume`).  Keyboard and mouse, on a
    plane: wheel / ``ArrowUp`` ``ArrowDown`` / ``PageUp`` ``PageDown`` scroll; a left click
    moves the crosshair (the other planes follow); a right drag, or shift + left drag,
    changes the window (horizontal: width, vertical: level).  The readout shows the LPS
    position in mm and the voxel value (and label) under the pointer.

    Every attribute below is synced with the browser and can be set from Python.
    """

    _esm = STATIC / "slices.js"
    _css = STATIC / "widgets.css"

    title = t.Unicode("").tag(sync=True)
    shape = t.List(t.Int(), default_value=[1, 1, 1]).tag(sync=True)
    spacing = t.List(t.Float(), default_value=[1.0, 1.0, 1.0]).tag(sync=True)
    """(dz, dy, dx) in mm; dz is the mean slice step when the spacing is not uniform."""
    affine = t.List(t.List(t.Float())).tag(sync=True)
    """Index (x, y, z) → LPS mm, the volume's ``affine_lps``."""
    plane_names = t.List(t.Unicode(), default_value=["axial", "coronal", "sagittal"]).tag(sync=True)
    flip_z = t.Bool(True).tag(sync=True)
    """Draw the slice axis bottom-up in the two reformatted planes (head up for axial stacks)."""
    modality = t.Unicode("").tag(sync=True)
    units = t.Unicode("").tag(sync=True)
    flags = t.List(t.Unicode()).tag(sync=True)
    cursor = t.List(t.Int(), default_value=[0, 0, 0]).tag(sync=True)
    """Crosshair position as voxel indices (z, y, x) of the full-resolution volume."""
    window_center = t.Float(0.0).tag(sync=True)
    window_width = t.Float(1.0).tag(sync=True)
    preset = t.Unicode("auto").tag(sync=True)
    presets = t.Dict().tag(sync=True)
    """Name → [centre, width]; CT presets from the volume, ``auto`` from percentiles."""
    has_mask = t.Bool(False).tag(sync=True)
    opacity = t.Float(0.4, min=0.0, max=1.0).tag(sync=True)
    label_colors = t.Dict().tag(sync=True)
    """Label (as a string) → CSS colour; unlisted labels take :data:`PALETTE`."""
    display_size = t.Int(320).tag(sync=True)
    """Largest side of each plane on screen, in CSS pixels."""
    cache_bytes = t.Int(CACHE_BYTES, min=0)
    """Budget of the kernel's band cache, in bytes (kernel only, not synced)."""
    prefetch = t.Bool(True)
    """Read the next band in the scroll direction in a background thread."""

    def __init__(
        self,
        levels: list[PyramidLevel],
        mask: Any = None,
        *,
        display_size: int = 320,
        **kwargs: Any,
    ) -> None:
        volume = levels[0].data
        nz, ny, nx = levels[0].shape
        dz, dy, dx = (float(s) for s in volume.attrs["spacing_zyx"])
        z = np.asarray(volume.coords["z"].values, dtype=float) if "z" in volume.coords else None
        if z is not None and z.size > 1:
            dz = float(abs(z[-1] - z[0]) / (z.size - 1)) or dz
        affine = np.asarray(volume.attrs["affine_lps"], dtype=float)
        modality = str(volume.attrs.get("modality", ""))
        presets = {
            k: [float(c), float(w)] for k, (c, w) in volume.attrs.get("window_presets", {}).items()
        }
        presets["auto"] = list(auto_window(self._coarsest_values(levels)))
        preset = "abdomen" if "abdomen" in presets else "auto"
        super().__init__(
            title=str(volume.attrs.get("description") or volume.name or ""),
            shape=[nz, ny, nx],
            spacing=[dz, dy, dx],
            affine=affine.tolist(),
            plane_names=plane_names(affine),
            flip_z=bool(affine[2, 2] >= 0),
            modality=modality,
            units=str(volume.attrs.get("units", "")),
            flags=[str(f) for f in volume.attrs.get("flags", [])],
            cursor=[nz // 2, ny // 2, nx // 2],
            presets=presets,
            preset=preset,
            window_center=presets[preset][0],
            window_width=presets[preset][1],
            has_mask=mask is not None,
            display_size=display_size,
            **kwargs,
        )
        self._levels = levels
        self._mask = None if mask is None else _raw(mask)
        if self._mask is not None and tuple(self._mask.shape) != (nz, ny, nx):
            raise ValueError(
                f"mask shape {tuple(self._mask.shape)} differs from volume {(nz, ny, nx)}"
            )
        self._masks = [] if mask is None else mask_levels(mask, levels)
        """The mask's stored array per level (None: sampled from the first, the store's rule)."""
        self._sources: dict[tuple[str, int], _Source] = {}
        self.cache = BandCache(self.cache_bytes)
        """The decoded bands, shared by the three planes (and the mask)."""
        self._pending: dict[tuple[Any, ...], Future[np.ndarray | None]] = {}
        self._pending_lock = threading.Lock()
        self._last_index: dict[int, int] = {}
        self.reads: list[tuple[str, int, int, int, int]] = []
        """(``"image"``/``"mask"``, level, axis, start, stop) of every read from the array:
        a band (start:stop along ``axis``, whole in-plane) or, when a band does not fit the
        budget, one slice; prefetches included."""
        self.served: list[dict[str, Any]] = []
        """Header of every slice sent, with ``seconds`` spent reading it (benchmarks, tests)."""
        self.on_msg(self._on_msg)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_volume(
        cls,
        volume: Any,
        mask: Any = None,
        *,
        catalog: Any = None,
        spacing: tuple[float, float, float] | None = None,
        display_size: int = 320,
    ) -> SliceViewer:
        """A viewer for a DataArray from :func:`voxelhub.open_series`, a catalog row or UID
        (with ``catalog``), or a plain numpy/dask array (with ``spacing`` in mm, z y x).

        ``catalog`` also gives access to the volume's coarser pyramid levels, which the viewer
        shows first; the default catalog (``$VOXELHUB_STORE``) is used when it is set.
        """
        vol, catalog = resolve(volume, catalog, spacing)
        return cls(levels_of(vol, catalog), mask, display_size=display_size)

    @staticmethod
    def _coarsest_values(levels: list[PyramidLevel]) -> np.ndarray:
        """Voxel values for the automatic window: the coarsest level, at most ~1M voxels."""
        data = levels[-1].data.data
        step = max(1, int(np.ceil((int(np.prod(data.shape)) / 1e6) ** (1 / 3))))
        sample = data[::step, ::step, ::step]
        if hasattr(sample, "compute"):
            sample = sample.compute(scheduler="sync")
        return np.asarray(sample)

    # -- Python API -------------------------------------------------------------------------
    @t.observe("preset")
    def _apply_preset(self, change: dict[str, Any]) -> None:
        values = self.presets.get(change["new"])
        if values is not None:
            self.window_center, self.window_width = float(values[0]), float(values[1])

    def scroll(self, axis: int | str, step: int = 1) -> None:
        """Move the crosshair ``step`` slices along ``axis`` (0/1/2 or ``"z"``/``"y"``/``"x"``)."""
        a = _axis(axis)
        cursor = list(self.cursor)
        cursor[a] = int(np.clip(cursor[a] + step, 0, self.shape[a] - 1))
        self.cursor = cursor

    def probe(self, z: int, y: int, x: int) -> dict[str, Any]:
        """LPS position (mm), voxel value and label at voxel (z, y, x); reads one voxel."""
        volume = self._levels[0].data
        value = volume.data[z, y, x]
        value = value.compute(scheduler="sync") if hasattr(value, "compute") else value
        lps = np.asarray(self.affine, dtype=float) @ np.array([x, y, z, 1.0])
        label = None
        if self._mask is not None:
            m = self._mask[z, y, x]
            label = int(m.compute(scheduler="sync") if hasattr(m, "compute") else m)
        return {
            "index": (z, y, x),
            "lps_mm": lps[:3].tolist(),
            "value": float(value),
            "label": label,
        }

    def levels_for(self, axis: int) -> list[int]:
        """Pyramid levels sent for a slice along ``axis``: the one that fits first, then 0."""
        coarse = finest_fitting(self._levels, self.display_size, _IN_PLANE[axis])
        return [coarse, 0] if coarse else [0]

    def slice(self, axis: int | str, index: int, level: int = 0) -> np.ndarray:
        """The 2-D slice through full-resolution ``index`` along ``axis``, at pyramid ``level``."""
        a = _axis(axis)
        lvl = self._levels[level]
        i = min(int(index) // lvl.factor[a], lvl.shape[a] - 1)
        return np.ascontiguousarray(self._cut("image", level, a, i))

    def mask_slice(self, axis: int | str, index: int, level: int = 0) -> np.ndarray | None:
        """The label slice matching :meth:`slice` (nearest neighbour at coarse levels)."""
        if self._mask is None:
            return None
        a = _axis(axis)
        lvl = self._levels[level]
        i = min(int(index) // lvl.factor[a], lvl.shape[a] - 1)
        if self._masks[level] is not None:  # the label image's own level
            m = self._cut("mask", level, a, i)
        else:  # sampled from the full-resolution labels as the store samples labels
            full = int(label_indices(self.shape[a], lvl.factor[a], lvl.shape[a])[i])
            m = self._cut("mask", 0, a, full)
            rows, cols = _IN_PLANE[a]
            m = sample_labels(
                m, (lvl.factor[rows], lvl.factor[cols]), (lvl.shape[rows], lvl.shape[cols])
            )
        top = int(m.max()) if m.size else 0
        return np.ascontiguousarray(m, dtype=np.uint8 if top < 256 else np.uint16)

    def close(self) -> None:
        with self._pending_lock:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
        self.cache.resize(0)
        super().close()

    # -- bands ------------------------------------------------------------------------------
    @t.observe("cache_bytes")
    def _resize_cache(self, change: dict[str, Any]) -> None:
        if hasattr(self, "cache"):
            self.cache.resize(int(change["new"]))

    def _source(self, name: str, level: int) -> _Source:
        key = (name, level)
        src = self._sources.get(key)
        if src is None:
            data = self._masks[level] if name == "mask" else self._levels[level].data.data
            src = self._sources[key] = _source_of(data)
        return src

    def _read_band(self, name: str, level: int, axis: int, band: int) -> np.ndarray | None:
        """Read, convert and cache one band; None when it does not fit the budget."""
        src = self._source(name, level)
        start, stop = _band_bounds(src, axis, band)
        itemsize = np.dtype(getattr(src.array, "dtype", np.float32)).itemsize
        if (
            int(np.prod(src.shape)) // src.shape[axis] * (stop - start) * itemsize
            > self.cache.budget
        ):
            return None
        region: list[Any] = [slice(None)] * 3
        region[axis] = slice(start, stop)
        arr = src.array[tuple(region)]
        if hasattr(arr, "compute"):
            arr = arr.compute(scheduler="sync")
        out = _wire(arr) if name == "image" else np.asarray(arr)
        self.reads.append((name, level, axis, start, stop))
        self.cache.put((name, level, axis, band), out)
        return out

    def _band(self, name: str, level: int, axis: int, band: int) -> np.ndarray | None:
        key = (name, level, axis, band)
        arr = self.cache.get(key)
        if arr is not None:
            return arr
        with self._pending_lock:
            future = self._pending.get(key)
        if future is not None:
            try:
                arr = future.result()
            except Exception:  # the prefetch failed: read it here, and raise here if it fails
                arr = None
            if arr is not None:
                return arr
        return self._read_band(name, level, axis, band)

    def _cut(self, name: str, level: int, axis: int, index: int) -> np.ndarray:
        """The slice ``index`` along ``axis`` of source ``name`` at ``level`` (a view if cached)."""
        src = self._source(name, level)
        sel: list[Any] = [slice(None)] * 3
        if src.in_memory:
            sel[axis] = index
            out = src.array[tuple(sel)]
            return _wire(out) if name == "image" else np.asarray(out)
        step = src.block[axis]
        band = self._band(name, level, axis, index // step)
        if band is not None:
            sel[axis] = index - (index // step) * step
            return band[tuple(sel)]
        # the band alone exceeds the budget: read just this slice
        sel[axis] = index
        arr = src.array[tuple(sel)]
        if hasattr(arr, "compute"):
            arr = arr.compute(scheduler="sync")
        self.reads.append((name, level, axis, index, index + 1))
        return _wire(arr) if name == "image" else np.asarray(arr)

    def _has_band(self, name: str, level: int, axis: int, index: int) -> bool:
        src = self._source(name, level)
        return src.in_memory or (name, level, axis, index // src.block[axis]) in self.cache

    def _schedule_prefetch(self, axis: int, index: int) -> None:
        """Read the next band in the direction of travel along ``axis`` in the background."""
        last = self._last_index.get(axis)
        self._last_index[axis] = index
        if not self.prefetch or last is None or last == index:
            return
        direction = 1 if index > last else -1
        names = ["image"] + (["mask"] if self._mask is not None else [])
        for name in names:
            src = self._source(name, 0)
            if src.in_memory:
                continue
            step = src.block[axis]
            band = index // step + direction
            if band < 0 or band * step >= src.shape[axis]:
                continue
            key = (name, 0, axis, band)
            if key in self.cache:
                continue
            with self._pending_lock:
                if key in self._pending:
                    continue
                future = _prefetch_pool().submit(self._prefetch_band, name, axis, band)
                self._pending[key] = future

    def _prefetch_band(self, name: str, axis: int, band: int) -> np.ndarray | None:
        try:
            return self._read_band(name, 0, axis, band)
        except Exception:
            log.warning(
                "prefetch of %s band %d along axis %d failed", name, band, axis, exc_info=True
            )
            return None
        finally:
            with self._pending_lock:
                self._pending.pop((name, 0, axis, band), None)

    def wait_prefetch(self, timeout: float | None = None) -> None:
        """Block until the background reads scheduled so far are done (tests, benchmarks)."""
        with self._pending_lock:
            futures = list(self._pending.values())
        for future in futures:
            with contextlib.suppress(Exception):  # logged by the prefetch thread
                future.result(timeout=timeout)

    # -- comm -------------------------------------------------------------------------------
    def _on_msg(self, _widget: Any, content: dict[str, Any], _buffers: list[Any]) -> None:
        if not isinstance(content, dict) or content.get("type") != "slice":
            return
        try:
            axis = _axis(content["axis"])
            index = int(np.clip(int(content["index"]), 0, self.shape[axis] - 1))
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring malformed slice request %r", content)
            return
        levels = self.levels_for(axis) if content.get("preview", True) else [0]
        if len(levels) > 1 and self._has_band("image", 0, axis, index):
            levels = [0]  # full resolution is in memory: a preview would only cost time
        full = bool(content.get("full", True))
        if not full:  # previews only: full resolution follows in a later request
            levels = [lvl for lvl in levels if lvl != 0]
        for n, level in enumerate(levels):
            start = time.perf_counter()
            data = self.slice(axis, index, level)
            mask = self.mask_slice(axis, index, level)
            header = {
                "type": "slice",
                "axis": axis,
                "index": index,
                "level": level,
                "factor": list(self._levels[level].factor),
                "shape": [int(s) for s in data.shape],
                "dtype": data.dtype.name,
                "mask_dtype": None if mask is None else mask.dtype.name,
                "final": full and n == len(levels) - 1,
                "seq": content.get("seq", 0),
                "kernel_ms": (time.perf_counter() - start) * 1e3,
            }
            buffers: list[Any] = [data.data.cast("B")]  # raw bytes, no copy
            if mask is not None:
                buffers.append(mask.data.cast("B"))
            self.served.append({**header, "seconds": header["kernel_ms"] / 1e3})
            self.send(header, buffers)
        if full:
            self._schedule_prefetch(axis, index)


def _raw(obj: Any) -> Any:
    return obj.data if isinstance(obj, xr.DataArray) else obj


def _axis(axis: int | str) -> int:
    if isinstance(axis, str):
        return {"z": 0, "y": 1, "x": 2}[axis]
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1, 2 or 'z', 'y', 'x', not {axis!r}")
    return int(axis)
