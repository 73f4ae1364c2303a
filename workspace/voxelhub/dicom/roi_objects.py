"""DICOM SEG and RTSTRUCT objects found while indexing: ROIs to attach, never image volumes.

A SEG has pixel data and would otherwise be planned as a volume of its own; an RTSTRUCT has
none and would be rejected as "not an image".  Both are recognised here from the header alone
(pydicom only, cheap enough for the indexing workers) and handed to
:func:`voxelhub.roi.attach.attach_rois`, which imports them onto the series they reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["RTSTRUCT_SOP_CLASS", "SEG_SOP_CLASSES", "RoiObject", "pending_root", "roi_object"]

SEG_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
        "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
    }
)
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


@dataclass(frozen=True)
class RoiObject:
    """A SEG or RTSTRUCT file and the image series it was drawn on."""

    source: str
    kind: str  # "SEG" or "RTSTRUCT"
    sop_instance_uid: str
    series_instance_uid: str
    referenced_series: tuple[str, ...]
    referenced_instances: tuple[str, ...]
    patient_id: str


def _referenced(ds: Any, kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    series: list[str] = []
    instances: list[str] = []
    if kind == "SEG":
        for item in ds.get("ReferencedSeriesSequence", []):
            series.append(str(item.get("SeriesInstanceUID", "")))
            instances += [
                str(ref.get("ReferencedSOPInstanceUID", ""))
                for ref in item.get("ReferencedInstanceSequence", [])
            ]
    else:
        for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
            for study in frame.get("RTReferencedStudySequence", []):
                for item in study.get("RTReferencedSeriesSequence", []):
                    series.append(str(item.get("SeriesInstanceUID", "")))
                    instances += [
                        str(ref.get("ReferencedSOPInstanceUID", ""))
                        for ref in item.get("ContourImageSequence", [])
                    ]
    return (
        tuple(dict.fromkeys(s for s in series if s)),
        tuple(dict.fromkeys(i for i in instances if i)),
    )


def roi_object(ds: Any, source: str) -> RoiObject | None:
    """The ROI object a header describes, or None for anything else."""
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", ""))
    if sop_class in SEG_SOP_CLASSES or (modality == "SEG" and not sop_class):
        kind = "SEG"
    elif sop_class == RTSTRUCT_SOP_CLASS or (modality == "RTSTRUCT" and not sop_class):
        kind = "RTSTRUCT"
    else:
        return None
    series, instances = _referenced(ds, kind)
    return RoiObject(
        source=source,
        kind=kind,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        referenced_series=series,
        referenced_instances=instances,
        patient_id=str(ds.get("PatientID", "")),
    )


def pending_root(project: str) -> str:
    """Where a project keeps ROI objects whose series is not in the store yet."""
    return f"projects/{project}/pending-labels"
