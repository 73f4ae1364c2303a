"""Enhanced (multi-frame) CT/MR: one :class:`~voxelhub.dicom.index.Frame` per frame.

Geometry, pixel measures, rescale and frame type are read per frame from the Per-frame
Functional Groups, falling back to the Shared Functional Groups, as PS3.3 C.7.6.16 defines.
Frames keep their DimensionIndexValues so that grouping can order them by the dimension index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

if TYPE_CHECKING:
    from voxelhub.dicom.index import Frame

ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.3": "Enhanced MR Color Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
}

_FRAME_TYPE_SEQUENCES = (
    "MRImageFrameTypeSequence",
    "CTImageFrameTypeSequence",
    "PETFrameTypeSequence",
)


def is_enhanced(ds: Dataset) -> bool:
    """True for multi-frame images whose geometry lives in functional groups."""
    return "PerFrameFunctionalGroupsSequence" in ds or (
        str(ds.get("SOPClassUID", "")) in ENHANCED_SOP_CLASSES
    )


def _group_item(per_frame: Dataset, shared: Dataset | None, sequence: str) -> Dataset | None:
    """The first item of a functional-group macro, per-frame first, then shared."""
    for holder in (per_frame, shared):
        if holder is not None and sequence in holder and len(holder[sequence].value):
            item: Dataset = holder[sequence].value[0]
            return item
    return None


def _value(item: Dataset | None, keyword: str) -> Any:
    if item is None:
        return None
    value = item.get(keyword)
    return None if value is None or value == "" else value


def frames_from_enhanced(ds: Dataset, source: str, common: dict[str, Any]) -> list[Frame]:
    """Expand an Enhanced image's frames into Frame records (0-based ``frame_index``)."""
    from voxelhub.dicom import acquisition
    from voxelhub.dicom.index import Frame, seconds_of_day

    n = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame_seq = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared_seq = ds.get("SharedFunctionalGroupsSequence") or []
    shared = shared_seq[0] if len(shared_seq) else None
    image_type = tuple(str(x) for x in (ds.get("ImageType") or ()))
    frames: list[Frame] = []
    for i in range(n):
        per_frame = per_frame_seq[i] if i < len(per_frame_seq) else Dataset()
        ipp = _value(
            _group_item(per_frame, shared, "PlanePositionSequence"), "ImagePositionPatient"
        )
        iop = _value(
            _group_item(per_frame, shared, "PlaneOrientationSequence"), "ImageOrientationPatient"
        )
        ps = _value(_group_item(per_frame, shared, "PixelMeasuresSequence"), "PixelSpacing")
        transform = _group_item(per_frame, shared, "PixelValueTransformationSequence")
        content = _group_item(per_frame, shared, "FrameContentSequence")
        echo = _group_item(per_frame, shared, "MREchoSequence")
        frame_type: tuple[str, ...] = image_type
        for seq in _FRAME_TYPE_SEQUENCES:
            ft = _value(_group_item(per_frame, shared, seq), "FrameType")
            if ft is not None:
                frame_type = tuple(str(x) for x in ft)
                break
        dim = _value(content, "DimensionIndexValues")
        if dim is None:
            dim_index: tuple[int, ...] = ()
        elif isinstance(dim, int):
            dim_index = (dim,)
        else:
            dim_index = tuple(int(x) for x in dim)
        temporal = _value(content, "TemporalPositionIndex")
        echo_time = _value(echo, "EffectiveEchoTime")
        slope = _value(transform, "RescaleSlope")
        intercept = _value(transform, "RescaleIntercept")
        cardiac = _group_item(per_frame, shared, "CardiacSynchronizationSequence")
        trigger = _value(cardiac, "NominalCardiacTriggerDelayTime")
        acquired = _value(content, "FrameAcquisitionDateTime")
        frames.append(
            Frame(
                frame_index=i,
                image_position=tuple(float(x) for x in ipp) if ipp is not None else None,  # type: ignore[arg-type]
                image_orientation=tuple(float(x) for x in iop) if iop is not None else None,  # type: ignore[arg-type]
                pixel_spacing=(float(ps[0]), float(ps[1])) if ps is not None else None,
                rescale_slope=float(slope)
                if slope is not None
                else float(ds.get("RescaleSlope", 1) or 1),
                rescale_intercept=float(intercept)
                if intercept is not None
                else float(ds.get("RescaleIntercept", 0) or 0),
                image_type=frame_type,
                echo_time=float(echo_time) if echo_time is not None else None,
                temporal_position=int(temporal) if temporal is not None else None,
                dimension_index=dim_index,
                trigger_time=float(trigger) if trigger is not None else None,
                acquisition_time=seconds_of_day(str(acquired)[8:]) if acquired else None,
                diffusion=acquisition.read_diffusion(ds, per_frame),
                philips_scale_slope=acquisition.philips_scale_slope(ds, per_frame),
                **common,
            )
        )
    return frames
