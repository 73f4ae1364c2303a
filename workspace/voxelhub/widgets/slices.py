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

Lazy access
-----------
The browser asks for one slice at a time (``{"type": "slice", "axis", "index"}``); the kernel
answers first from the finest pyramid level that fits the display and then from full
resolution, reading only the chunks that the slice crosses (``volume.data[index]`` on the dask
array, computed with the synchronous scheduler so that a slice never travels to a cluster).
The browser keeps at most one request per plane in flight and asks for the newest position
when an answer arrives, so fast scrolling skips slices instead of queueing them.  The preview
level is asked for on a plane's first slice and whenever the last full-resolution slice took
more than 60 ms (a slow or remote store); on a fast local store scrolling reads only full
resolution, which halves the kernel's work per step.  Slices are
kept in a small LRU cache in the kernel.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from collections import OrderedDict
from typing import Any

import anywidget
import numpy as np
import traitlets as t
import xarray as xr

from voxelhub.widgets.pyramid import PyramidLevel, as_volume, finest_fitting, levels_of

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
CACHE_BYTES = 64 * 2**20


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
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self.reads: list[tuple[int, int, int]] = []
        """(level, axis, index) of every slice read from the array (cache misses), for tests."""
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
        if catalog is None and os.environ.get("VOXELHUB_STORE"):
            from voxelhub import open_catalog

            catalog = open_catalog()
        if isinstance(volume, str) or (
            hasattr(volume, "to_dict") and not isinstance(volume, xr.DataArray)
        ):
            from voxelhub import open_series

            volume = open_series(volume, catalog=catalog)
        vol = as_volume(volume, spacing)
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
        key = (level, a, i)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        sel: list[Any] = [slice(None)] * 3
        sel[a] = i
        arr = lvl.data.data[tuple(sel)]
        if hasattr(arr, "compute"):
            arr = arr.compute(scheduler="sync")
        out = np.ascontiguousarray(arr)
        if out.dtype.name not in _WIRE_DTYPES:
            out = out.astype(np.float32)
        out = out.astype(out.dtype.newbyteorder("<"), copy=False)
        self.reads.append(key)
        self._cache[key] = out
        self._cache_bytes += out.nbytes
        while self._cache_bytes > CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes
        return out

    def mask_slice(self, axis: int | str, index: int, level: int = 0) -> np.ndarray | None:
        """The label slice matching :meth:`slice` (nearest neighbour at coarse levels)."""
        if self._mask is None:
            return None
        a = _axis(axis)
        sel: list[Any] = [slice(None)] * 3
        sel[a] = int(index)
        m = self._mask[tuple(sel)]
        if hasattr(m, "compute"):
            m = m.compute(scheduler="sync")
        m = np.asarray(m)
        rows, cols = _IN_PLANE[a]
        f = self._levels[level].factor
        m = m[:: f[rows], :: f[cols]]
        top = int(m.max()) if m.size else 0
        return np.ascontiguousarray(m, dtype=np.uint8 if top < 256 else np.uint16)

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
                "final": n == len(levels) - 1,
                "seq": content.get("seq", 0),
            }
            buffers = [data.tobytes()]
            if mask is not None:
                buffers.append(mask.tobytes())
            self.served.append({**header, "seconds": time.perf_counter() - start})
            self.send(header, buffers)


def _raw(obj: Any) -> Any:
    return obj.data if isinstance(obj, xr.DataArray) else obj


def _axis(axis: int | str) -> int:
    if isinstance(axis, str):
        return {"z": 0, "y": 1, "x": 2}[axis]
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1, 2 or 'z', 'y', 'x', not {axis!r}")
    return int(axis)
