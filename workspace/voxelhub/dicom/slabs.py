"""Read a planned volume slab by slab, in modality units: the only path from files to voxels.

A slab is a run of consecutive slices in spatial order; reading one never touches the files of
other slabs, so converting a volume needs memory for one slab, not the whole volume.
"""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np

from voxelhub.dicom import mosaic
from voxelhub.dicom.index import Frame
from voxelhub.dicom.pixels import DtypeChoice, decode_frame, rescale_into
from voxelhub.dicom.series import VolumePlan


def volume_shape(plan: VolumePlan) -> tuple[int, int, int]:
    """(z, y, x) shape of the volume the plan describes."""
    if plan.mosaic is not None:
        return (plan.mosaic.n_slices, plan.mosaic.tile_rows, plan.mosaic.tile_columns)
    first = plan.frames[0]
    return (len(plan.frames), first.rows, first.columns)


def read_slab(
    plan: VolumePlan,
    start: int,
    stop: int,
    choice: DtypeChoice,
    *,
    pool: Executor | None = None,
) -> np.ndarray:
    """Slices ``start:stop`` of the volume, rescaled into ``choice.dtype``.

    ``pool`` (threads or processes) decodes the slab's files in parallel; results are placed by
    slice index, so the order never depends on which file finished first.
    """
    _, ny, nx = volume_shape(plan)
    out = np.empty((stop - start, ny, nx), dtype=choice.dtype)
    if plan.mosaic is not None:
        frame = plan.frames[0]
        volume = mosaic.demosaic(decode_frame(frame), plan.mosaic)
        for k in range(start, stop):
            rescale_into(out[k - start], volume[plan.geometry.order[k]], frame, choice)
        return out
    frames: list[Frame] = plan.frames[start:stop]
    stored = pool.map(decode_frame, frames) if pool is not None else map(decode_frame, frames)
    for k, (frame, arr) in enumerate(zip(frames, stored, strict=True)):
        rescale_into(out[k], arr, frame, choice)
    return out
