"""VolumeViewer: multiplanar and volume rendering in ipyniivue, fed from a pyramid level.

ipyniivue (an anywidget; its WebGL2 bundle ships in the wheel) works offline in JupyterLab 4
with ipywidgets 8 and renders in headless Chromium on software GL.  itkwidgets does not: 0.32
needs ipywidgets < 8 and 1.0 (alpha) loads its viewer, Vue and ImJoy from public CDNs and an
IPFS gateway at run time (``../shared/notes/viewers.md``), so there is no itkwidgets backend.

The volume goes to the browser as NIfTI bytes written by :func:`voxelhub.to_nifti`, so its RAS
affine is ``diag(-1, -1, 1, 1) @ affine_lps`` exactly (sheared under gantry tilt); the level sent
is the finest one with at most ``max_voxels`` voxels.  A label mask follows the same level (the
label image's own stored level, or sampled by the store's rule for labels) and is drawn as an
overlay.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import ipywidgets as w
import numpy as np
import xarray as xr

from voxelhub.store.ngff import sample_labels
from voxelhub.widgets.pyramid import (
    PyramidLevel,
    fitting_voxels,
    label_level,
    levels_of,
    mask_levels,
    resolve,
)

log = logging.getLogger(__name__)

MAX_VOXELS = 8 * 2**20
"""Default budget: 8 Mi voxels (16 MB of int16) is quick to send and fits any WebGL2 texture."""


def nifti_bytes(volume: xr.DataArray) -> bytes:
    """The volume as an uncompressed NIfTI-1 file in memory (through :func:`voxelhub.to_nifti`)."""
    from voxelhub import to_nifti

    with tempfile.TemporaryDirectory(prefix="voxelhub-nii-") as tmp:
        path = os.path.join(tmp, "volume.nii")
        to_nifti(volume, path)
        with open(path, "rb") as fh:
            return fh.read()


def labels_at(mask: Any, factor: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Labels on a level's grid: ``mask`` as it is when it already has ``shape``, else
    sampled from full resolution by the store's rule (:func:`voxelhub.store.ngff.sample_labels`:
    nearest neighbour at block centres)."""
    raw = mask.data if isinstance(mask, xr.DataArray) else mask
    part = raw if tuple(raw.shape) == tuple(shape) else sample_labels(raw, factor, shape)
    if hasattr(part, "compute"):
        part = part.compute()
    part = np.asarray(part)
    return part.astype(np.uint8 if part.size == 0 or part.max() < 256 else np.uint16)


class VolumeViewer(w.VBox):
    """ipyniivue showing a volume (and a mask) in multiplanar + 3-D render layout.

    Build one with :func:`voxelhub.widgets.view3d` (or :meth:`from_volume`).  :attr:`niivue`
    is the underlying ``ipyniivue.NiiVue`` for anything not wrapped here.
    """

    def __init__(
        self,
        level: PyramidLevel,
        mask: Any = None,
        *,
        level_index: int = 0,
        height: int = 420,
        **kwargs: Any,
    ) -> None:
        from ipyniivue import NiiVue, SliceType

        volume = level.data
        self.level = level
        self.level_index = level_index
        self.niivue = NiiVue(
            height=height,
            multiplanar_force_render=True,
            show_3d_crosshair=True,
            is_colorbar=False,
            back_color=(0.0, 0.0, 0.0, 1.0),
        )
        modality = str(volume.attrs.get("modality", ""))
        spec: dict[str, Any] = {
            "data": nifti_bytes(volume),
            "name": "volume.nii",
            "colormap": "gray",
        }
        presets = volume.attrs.get("window_presets") or {}
        if modality == "CT" and "abdomen" in presets:
            center, width = presets["abdomen"]
            spec.update(cal_min=float(center - width / 2), cal_max=float(center + width / 2))
        volumes = [spec]
        self.mask_level: xr.DataArray | None = None
        if mask is not None:
            labels = labels_at(mask, level.factor, level.shape)
            self.mask_level = volume.copy(data=labels)
            volumes.append(
                {
                    "data": nifti_bytes(self.mask_level),
                    "name": "mask.nii",
                    "colormap": "red",
                    "opacity": 0.5,
                    "cal_min": 0.5,
                    "cal_max": float(max(1, int(labels.max()))),
                }
            )
        self.niivue.load_volumes(volumes)
        self.niivue.set_slice_type(SliceType.MULTIPLANAR)
        self.mode = w.ToggleButtons(
            options=[("planes + 3D", "multiplanar"), ("3D", "render"), ("axial", "axial")],
            value="multiplanar",
            style={"button_width": "90px"},
        )
        self.mode.observe(self._mode_changed, names="value")
        nz, ny, nx = level.shape
        flags = volume.attrs.get("flags") or []
        header = w.HTML(
            f"<b>{volume.attrs.get('description') or volume.name or ''}</b> · level "
            f"{volume.attrs.get('level', level_index)} ({nz}×{ny}×{nx}, factor "
            f"{'×'.join(str(f) for f in level.factor)})"
            + (f" · ⚠ {', '.join(flags)}" if flags else "")
        )
        super().__init__([header, self.mode, self.niivue], **kwargs)
        self.add_class("voxelhub-volume3d")

    @classmethod
    def from_volume(
        cls,
        volume: Any,
        mask: Any = None,
        *,
        catalog: Any = None,
        max_voxels: int = MAX_VOXELS,
        spacing: tuple[float, float, float] | None = None,
        height: int = 420,
    ) -> VolumeViewer:
        """Pick the finest stored level with at most ``max_voxels`` voxels and show it.

        ``volume`` is a DataArray from :func:`voxelhub.open_series`, a catalog row or UID (with
        ``catalog``), or a numpy array (with ``spacing``).  ``mask`` has the shape of
        ``volume``.
        """
        vol, catalog = resolve(volume, catalog, spacing)
        if mask is not None and tuple(mask.shape) != tuple(vol.shape):
            raise ValueError(
                f"mask shape {tuple(mask.shape)} differs from volume {tuple(vol.shape)}"
            )
        levels = levels_of(vol, catalog)
        index = fitting_voxels(levels, max_voxels)
        log.info("3-D view of %s at level %d %s", vol.name, index, levels[index].shape)
        if mask is not None:  # the label image's stored level, or sampled as the store says
            mask = label_level(mask_levels(mask, levels), levels, index)
        return cls(levels[index], mask, level_index=index, height=height)

    def _mode_changed(self, change: dict[str, Any]) -> None:
        from ipyniivue import SliceType

        kinds = {
            "multiplanar": SliceType.MULTIPLANAR,
            "render": SliceType.RENDER,
            "axial": SliceType.AXIAL,
        }
        self.niivue.set_slice_type(kinds[change["new"]])
