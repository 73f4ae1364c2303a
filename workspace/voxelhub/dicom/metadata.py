"""The ``acquisition`` block stored with every volume: what a researcher needs to analyse it.

It holds what dcm2niix writes into its BIDS sidecar (:func:`voxelhub.dicom.acquisition.sidecar`:
timing, field strength, sequence, phase encoding …; none of it identifies a person, so it is kept
whether or not the project de-identifies), plus what only the whole volume knows: slice timing,
the Philips floating-point scale, and the per-volume table of a 4-D series.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from voxelhub.dicom import acquisition

if TYPE_CHECKING:
    from voxelhub.dicom.series import VolumePlan


FREE_TEXT = ("SeriesDescription", "ProtocolName", "SequenceName", "ImageComments")
"""Sidecar keys that hold text a person typed: they follow the de-identified header."""


def acquisition_block(
    plan: VolumePlan, header: Dataset, deidentified: Dataset | None = None
) -> dict[str, Any]:
    """The BIDS-style acquisition block of one planned volume, from its first raw header.

    With ``deidentified`` (the same header after the project's profile), free-text keys take
    its value, or are left out where the profile removed them: a series description may hold
    a name.  Everything else is acquisition physics and stays.
    """
    block = acquisition.sidecar(header)
    if deidentified is not None:
        for key in FREE_TEXT:
            if key not in block:
                continue
            value = deidentified.get(key)
            if value in (None, ""):
                del block[key]
            else:
                block[key] = str(value)
    timing = slice_timing(plan)
    if timing is not None:
        block["SliceTiming"] = timing
    scales = {f.philips_scale_slope for f in plan.frames if f.philips_scale_slope}
    if scales:
        block["PhilipsScaleSlope"] = sorted(scales)[0] if len(scales) == 1 else sorted(scales)
        block["PhilipsFloatingPoint"] = (
            "stored values are the DICOM rescale (SV * RescaleSlope + RescaleIntercept); Philips' "
            "floating-point value is stored / (RescaleSlope * PhilipsScaleSlope)"
        )
    directions = {tp.phase_encoding_direction for tp in plan.timepoints}
    if len(directions) == 1 and None not in directions:
        block["PhaseEncodingDirection"] = directions.pop()
    elif len(directions) > 1:
        block.pop("PhaseEncodingDirection", None)
        block["PhaseEncodingDirectionPerVolume"] = [
            tp.phase_encoding_direction for tp in plan.timepoints
        ]
    if plan.is_4d:
        block["NumberOfVolumes"] = plan.n_timepoints
        bvals = [tp.b_value for tp in plan.timepoints]
        if any(b is not None for b in bvals):
            block["DiffusionBValues"] = bvals
    return block


def slice_timing(plan: VolumePlan) -> list[float] | None:
    """Seconds from the first slice's acquisition to each slice's, in the store's z order.

    From the cardiac trigger time (GE writes each slice's delay there) or the acquisition time
    of each slice of the first volume, when those differ between slices; None otherwise (a 3-D
    acquisition, or nothing recorded).
    """
    if plan.mosaic is not None or plan.modality != "MR":
        return None
    frames = plan.frames_of(0)
    if len(frames) < 2:
        return None
    for values, scale in (
        ([f.trigger_time for f in frames], 1000.0),
        ([f.acquisition_time for f in frames], 1.0),
    ):
        if None in values or len(set(values)) < 2:
            continue
        numbers = [float(v) for v in values if v is not None]
        first = min(numbers)
        return [round((v - first) / scale, 6) for v in numbers]
    return None
