"""Read a planned volume slab by slab, in modality units: the only path from files to voxels.

A slab is a run of consecutive slices of one time point in spatial order; reading one never
touches the files of other slabs, so converting a volume needs memory for one slab, not the
whole volume.  An Enhanced multi-frame file is parsed once per slab, not once per frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Executor

import numpy as np

from voxelhub.dicom import mosaic
from voxelhub.dicom.index import Frame
from voxelhub.dicom.pixels import DtypeChoice, decode_frame, decode_frames, rescale_into
from voxelhub.dicom.series import VolumePlan


def volume_shape(plan: VolumePlan) -> tuple[int, int, int]:
    """(z, y, x) shape of one volume (one time point) the plan describes."""
    if plan.mosaic is not None:
        return (plan.mosaic.n_slices, plan.mosaic.tile_rows, plan.mosaic.tile_columns)
    first = plan.frames[0]
    return (len(plan.frames) // plan.n_timepoints, first.rows, first.columns)


def channels(plan: VolumePlan) -> int | None:
    """3 for a colour volume (stored with a channel axis ``c``), None for a grey one."""
    return 3 if plan.frames[0].samples_per_pixel == 3 else None


def stored_shape(plan: VolumePlan) -> tuple[int, ...]:
    """Shape of the stored array: ``(t, z, y, x)`` for a 4-D volume, ``(c, z, y, x)`` for a
    colour one, ``(t, c, z, y, x)`` for both (NGFF's axis order), else ``(z, y, x)``."""
    shape = volume_shape(plan)
    n_c = channels(plan)
    if n_c is not None:
        shape = (n_c, *shape)  # type: ignore[assignment]
    return (plan.n_timepoints, *shape) if plan.is_4d else shape


def read_slab(
    plan: VolumePlan,
    start: int,
    stop: int,
    choice: DtypeChoice,
    *,
    t: int = 0,
    pool: Executor | None = None,
) -> np.ndarray:
    """Slices ``start:stop`` of time point ``t``, rescaled into ``choice.dtype``; a colour
    volume's slab is ``(c, stop - start, y, x)``, its three channels read together.

    ``pool`` (threads or processes) decodes the slab's files in parallel; results are placed by
    slice index, so the order never depends on which file finished first.  Rows a vendor stored
    reversed (GE ``epi_pepolar``) are flipped back here.
    """
    _, ny, nx = volume_shape(plan)
    n_c = channels(plan)
    lead: tuple[int, ...] = () if n_c is None else (n_c,)
    out = np.empty((*lead, stop - start, ny, nx), dtype=choice.dtype)
    frames: list[Frame] = plan.frames_of(t)
    if plan.mosaic is not None:
        frame = frames[0]
        volume = mosaic.demosaic(decode_frame(frame), plan.mosaic)
        for k in range(start, stop):
            rescale_into(out[k - start], volume[plan.geometry.order[k]], frame, choice)
    else:
        wanted = frames[start:stop]
        for k, (frame, arr) in enumerate(zip(wanted, _decode(wanted, pool), strict=True)):
            rescale_into(out[k] if n_c is None else out[:, k], arr, frame, choice)
    if plan.timepoints and plan.timepoints[t].rows_reversed:
        out = out[..., ::-1, :].copy()
    return out


def _decode(frames: list[Frame], pool: Executor | None) -> Iterable[np.ndarray]:
    """Stored values of ``frames`` in order; frames of one multi-frame file share one parse."""
    if all(f.frame_index is None for f in frames):
        return pool.map(decode_frame, frames) if pool is not None else map(decode_frame, frames)
    by_file: dict[str, list[int]] = {}
    for k, f in enumerate(frames):
        by_file.setdefault(f.source, []).append(k)
    out: list[np.ndarray | None] = [None] * len(frames)
    for positions in by_file.values():
        for k, arr in zip(positions, decode_frames([frames[k] for k in positions]), strict=True):
            out[k] = arr
    return [a for a in out if a is not None]
