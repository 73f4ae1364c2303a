"""Grouping: frames → patient / study / series → volumes.

A DICOM series is often several volumes: two echoes, magnitude and phase, a scout in another
orientation, repeated acquisitions, or — as in real data here — the same image saved under one
SeriesInstanceUID with different SeriesNumbers.  :func:`plan_volumes` splits a series on every
field that makes frames belong to different volumes, and only then sorts each volume in space.
Duplicated instances (same SOPInstanceUID and frame) are kept once and counted.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from voxelhub.dicom.geometry import Flag, Geometry, compute_geometry
from voxelhub.dicom.index import Frame
from voxelhub.dicom.mosaic import MosaicLayout, plan_mosaic
from voxelhub.errors import GeometryError

# Fields that always separate volumes inside one series, with the label used to name the split.
_ALWAYS_SPLIT: list[tuple[str, Callable[[Frame], Any]]] = [
    ("series_number", lambda f: f.series_number),
    ("size", lambda f: (f.rows, f.columns)),
    ("orientation", lambda f: _round(f.image_orientation, 4)),
    ("pixel_spacing", lambda f: _round(f.pixel_spacing, 4)),
    ("echo", lambda f: (f.echo_number, None if f.echo_time is None else round(f.echo_time, 3))),
    ("mosaic", lambda f: f.is_mosaic),
]

# Fields that separate volumes only when positions repeat (else they are one stack).  ImageType
# is here, not above: magnitude/phase or original/derived frames share positions and split here,
# while a head CT whose posterior-fossa slices carry an extra "ADD" value (real GE data in
# shared/data) stays the one variable-spacing volume it is, as dcm2niix reads it.
_SPLIT_IF_REPEATED: list[tuple[str, Callable[[Frame], Any]]] = [
    ("image_type", lambda f: f.image_type),
    ("acquisition", lambda f: f.acquisition_number),
    ("temporal_position", lambda f: f.temporal_position),
    ("stack", lambda f: f.dimension_index[0] if f.dimension_index else None),
]


def _round(values: Iterable[float] | None, ndigits: int) -> tuple[float, ...] | None:
    return None if values is None else tuple(round(v, ndigits) + 0.0 for v in values)


@dataclass
class VolumePlan:
    """The frames of one volume, sorted in space, with its geometry and what split it off."""

    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    modality: str
    series_number: int | None
    frames: list[Frame]
    geometry: Geometry
    split: dict[str, Any] = field(default_factory=dict)
    mosaic: MosaicLayout | None = None

    @property
    def split_label(self) -> str:
        """Short, stable name of what distinguishes this volume from its siblings ('' if none)."""
        return ",".join(f"{k}={_label_value(v)}" for k, v in sorted(self.split.items()))

    @property
    def volume_uid(self) -> str:
        """Stable identity of the volume: its series UID plus the split, hashed."""
        key = f"{self.series_instance_uid}|{self.split_label}".encode()
        return hashlib.sha256(key).hexdigest()[:24]

    @property
    def instance_uids(self) -> list[str]:
        seen: dict[str, None] = {}
        for f in self.frames:
            seen.setdefault(f.sop_instance_uid, None)
        return list(seen)


def _label_value(v: Any) -> str:
    if isinstance(v, tuple):
        return "x".join(_label_value(x) for x in v if x is not None) or "none"
    return str(v)


@dataclass(frozen=True)
class RejectedVolume:
    """A group of frames that could not become a volume, and why."""

    series_instance_uid: str
    split: dict[str, Any]
    sources: list[str]
    reason: str


def deduplicate(frames: Iterable[Frame]) -> tuple[list[Frame], int]:
    """Keep the first frame per (SOPInstanceUID, frame index); return them and the count dropped."""
    seen: set[tuple[str, int | None]] = set()
    kept: list[Frame] = []
    dropped = 0
    for f in frames:
        key = (f.sop_instance_uid, f.frame_index)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(f)
    return kept, dropped


def _split(
    frames: list[Frame], rules: list[tuple[str, Callable[[Frame], Any]]]
) -> list[tuple[dict[str, Any], list[Frame]]]:
    groups: dict[tuple[Any, ...], list[Frame]] = defaultdict(list)
    for f in frames:
        groups[tuple(fn(f) for _, fn in rules)].append(f)
    varying = [i for i, _ in enumerate(rules) if len({k[i] for k in groups}) > 1]
    out = []
    for key, members in groups.items():
        out.append(({rules[i][0]: key[i] for i in varying}, members))
    return out


def _has_repeated_positions(frames: list[Frame]) -> bool:
    positions = [_round(f.image_position, 3) for f in frames]
    return None not in positions and len(set(positions)) < len(positions)


@dataclass
class Plan:
    """Every volume found, every group of frames that could not be one, duplicates dropped."""

    volumes: list[VolumePlan]
    rejected: list[RejectedVolume]
    duplicates: int


def plan_volumes(frames: Iterable[Frame]) -> Plan:
    """Group frames into volumes, each sorted along its normal with its geometry computed."""
    unique, dropped = deduplicate(frames)
    by_series: dict[tuple[str, str], list[Frame]] = defaultdict(list)
    for f in unique:
        by_series[(f.study_instance_uid, f.series_instance_uid)].append(f)
    plans: list[VolumePlan] = []
    rejected: list[RejectedVolume] = []
    for (study_uid, series_uid), members in sorted(by_series.items()):
        for split, group in _split(members, _ALWAYS_SPLIT):
            parts = [(split, group)]
            if _has_repeated_positions(group):
                parts = []
                for extra, sub in _split(group, _SPLIT_IF_REPEATED):
                    parts.append(({**split, **extra}, sub))
            n_orientations = len({_round(f.image_orientation, 4) for f in members})
            for part_split, part in parts:
                try:
                    new = _plan(study_uid, series_uid, part_split, part)
                except GeometryError as exc:
                    rejected.append(
                        RejectedVolume(
                            series_uid, part_split, sorted({f.source for f in part}), str(exc)
                        )
                    )
                    continue
                for plan in new:
                    if n_orientations > 1:
                        plan.geometry.flags.append(
                            Flag(
                                "mixed_orientation",
                                f"the series holds {n_orientations} slice orientations; each "
                                "became its own volume",
                            )
                        )
                    plans.append(plan)
    return Plan(plans, rejected, dropped)


def _plan(
    study_uid: str, series_uid: str, split: dict[str, Any], frames: list[Frame]
) -> list[VolumePlan]:
    first = frames[0]
    if first.is_mosaic:
        return plan_mosaic(study_uid, series_uid, split, frames)
    if any(f.image_position is None for f in frames):
        frames = sorted(frames, key=lambda f: (f.dimension_index, f.source, f.frame_index or 0))
    geometry = compute_geometry(
        [f.image_position for f in frames],
        first.image_orientation,
        first.pixel_spacing,
        fallback_slice_spacing=first.slice_spacing,
        gantry_tilt=first.gantry_tilt,
    )
    ordered = [frames[i] for i in geometry.order]
    return [
        VolumePlan(
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            patient_id=first.patient_id,
            modality=first.modality,
            series_number=first.series_number,
            frames=ordered,
            geometry=geometry,
            split=split,
        )
    ]
