"""Grouping: frames → patient / study / series → volumes.

A DICOM series is often several volumes: two echoes, magnitude and phase, a scout in another
orientation, repeated acquisitions, or — as in real data here — the same image saved under one
SeriesInstanceUID with different SeriesNumbers.  :func:`plan_volumes` splits a series on every
field that makes frames belong to different volumes, and only then sorts each volume in space.
Duplicated instances (same SOPInstanceUID and frame) are kept once and counted.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
    ("colour", lambda f: f.samples_per_pixel == 3),  # RGB frames never join a grey volume
]

# Fields that separate volumes only when positions repeat (else they are one stack).  ImageType
# is here, not above: magnitude/phase or original/derived frames share positions and split here,
# while a head CT whose posterior-fossa slices carry an extra "ADD" value (real GE data in
# shared/data) stays the one variable-spacing volume it is, as dcm2niix reads it.  Different
# image types stay separate volumes, as dcm2niix and BIDS keep them; what else repeats a
# position (time, diffusion, label/control, acquisition) becomes the t axis of one 4-D volume.
_SPLIT_IF_REPEATED: list[tuple[str, Callable[[Frame], Any]]] = [
    ("image_type", lambda f: f.image_type),
    ("ge_image_type", lambda f: f.vendor_image_kind),  # GE (0043,102F): see ge_image_kind
    (
        "stack",
        lambda f: (
            f.dimension_index[0] if f.dimension_index and len(f.dimension_index) > 2 else None
        ),
    ),
]


def _round(values: Iterable[float] | None, ndigits: int) -> tuple[float, ...] | None:
    return None if values is None else tuple(round(v, ndigits) + 0.0 for v in values)


@dataclass(frozen=True)
class TimePoint:
    """One volume along ``t`` of a 4-D series: what the scanner recorded for it.

    ``gradient_lps`` is the diffusion direction in DICOM patient coordinates, ``gradient_image``
    the same vector in the volume's own (x, y, z) index axes; ``rows_reversed`` marks a volume
    whose rows the vendor stored in reverse order (GE ``epi_pepolar``) and that is flipped back.
    """

    index: int
    time: float | None = None
    b_value: float | None = None
    gradient_lps: tuple[float, float, float] | None = None
    gradient_image: tuple[float, float, float] | None = None
    echo_time: float | None = None
    label: str | None = None
    temporal_position: int | None = None
    acquisition_number: int | None = None
    rows_reversed: bool = False
    phase_encoding_direction: str | None = None

    def to_attrs(self) -> dict[str, Any]:
        """JSON-ready row of the acquisition table stored with the image."""
        return {
            "index": self.index,
            "time_s": self.time,
            "b_value": self.b_value,
            "gradient_lps": list(self.gradient_lps) if self.gradient_lps else None,
            "gradient_image": list(self.gradient_image) if self.gradient_image else None,
            "echo_time_s": self.echo_time,
            "label": self.label,
            "temporal_position": self.temporal_position,
            "acquisition_number": self.acquisition_number,
            "rows_reversed": self.rows_reversed,
            "phase_encoding_direction": self.phase_encoding_direction,
        }


@dataclass
class VolumePlan:
    """The frames of one volume, sorted in space, with its geometry and what split it off.

    A 4-D volume has several ``timepoints``; its ``frames`` are then ordered t-major (all slices
    of volume 0 in space order, then volume 1 …), or one mosaic frame per time point.
    """

    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    modality: str
    series_number: int | None
    frames: list[Frame]
    geometry: Geometry
    split: dict[str, Any] = field(default_factory=dict)
    mosaic: MosaicLayout | None = None
    timepoints: list[TimePoint] = field(default_factory=list)

    @property
    def n_timepoints(self) -> int:
        return max(1, len(self.timepoints))

    @property
    def is_4d(self) -> bool:
        return len(self.timepoints) > 1

    def frames_of(self, t: int) -> list[Frame]:
        """The frames of volume ``t`` in space order (a mosaic: its one frame)."""
        if self.mosaic is not None:
            return [self.frames[t]]
        n = len(self.frames) // self.n_timepoints
        return self.frames[t * n : (t + 1) * n]

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
    """Group frames into volumes, each sorted along its normal with its geometry computed.

    Frames that repeat slice positions become one 4-D volume when the repeats can be told apart
    (see :func:`split_timepoints`); otherwise the group is refused with the reason.  No
    exception escapes for one group: a damaged group is a rejected volume, the rest goes on.
    """
    unique, dropped = deduplicate(frames)
    by_series = _by_series(unique)
    in_studies = Counter(series_uid for _, series_uid in by_series)
    plans: list[VolumePlan] = []
    rejected: list[RejectedVolume] = []
    for (study_uid, series_uid), members in sorted(by_series.items()):
        n_orientations = len({_round(f.image_orientation, 4) for f in members})
        studies = sorted({f.study_instance_uid for f in members})
        for split, group in _split(members, _ALWAYS_SPLIT):
            if in_studies[series_uid] > 1:  # one series UID, several patients: never merged
                split = {**split, "study": study_uid}
            parts = [(split, group)]
            if not group[0].is_mosaic and _has_repeated_positions(group):
                parts = []
                for extra, sub in _split(group, _SPLIT_IF_REPEATED):
                    parts.append(({**split, **extra}, sub))
            for part_split, part in parts:
                try:
                    new = _plan(study_uid, series_uid, part_split, part)
                except (
                    Exception
                ) as exc:  # GeometryError, or a damaged value: refuse this group only
                    reason = (
                        str(exc)
                        if isinstance(exc, GeometryError)
                        else (f"could not plan the volume ({type(exc).__name__}: {exc})")
                    )
                    rejected.append(
                        RejectedVolume(
                            series_uid, part_split, sorted({f.source for f in part}), reason
                        )
                    )
                    continue
                for plan in new:
                    _flag_vendor_split(plan, part_split)
                    if len(studies) > 1:
                        plan.geometry.flags.append(
                            Flag(
                                "mixed_study_uids",
                                f"the series' slices carry {len(studies)} StudyInstanceUIDs "
                                f"({', '.join(studies)}) for one patient: kept as one volume, "
                                "as dcm2niix reads them, listed under its first slice's study",
                            )
                        )
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


def _flag_vendor_split(plan: VolumePlan, split: dict[str, Any]) -> None:
    """Say why a volume was split off on a vendor's private tag rather than a public one."""
    kind = split.get("ge_image_type")
    if "ge_image_type" in split:
        plan.geometry.flags.append(
            Flag(
                "ge_private_image_type",
                f"GE private image type (0043,102F) is {kind or 'absent'} here: GE wrote "
                "magnitude/phase/real/imaginary images into one series with the same ImageType "
                "and slice positions; split on the private tag into separate volumes, as dcm2niix "
                "does, instead of being mistaken for repeated volumes",
            )
        )


def _by_series(frames: list[Frame]) -> dict[tuple[str, str], list[Frame]]:
    """Frames by (study, series) UID, never losing slices that share a SeriesInstanceUID.

    A SeriesInstanceUID names one series of one study, yet real files break that: an anonymiser
    that makes a new StudyInstanceUID per file (rt-utils' oblique test data), or two exports
    merged.  Slices of one series and one patient stay one series, under the study UID most of
    them carry (the volume is flagged ``mixed_study_uids``), as dcm2niix reads them.  Slices of
    one series UID from different patients stay apart by study: :func:`plan_volumes` adds the
    study to their split, so each becomes its own volume and none overwrites another.
    """
    by_series: dict[str, list[Frame]] = defaultdict(list)
    for f in frames:
        by_series[f.series_instance_uid].append(f)
    out: dict[tuple[str, str], list[Frame]] = {}
    for series_uid, members in by_series.items():
        if len({f.patient_id for f in members}) > 1:
            for f in members:
                out.setdefault((f.study_instance_uid, series_uid), []).append(f)
            continue
        counts = Counter(f.study_instance_uid for f in members)
        study = max(sorted(counts), key=lambda u: counts[u])
        out[(study, series_uid)] = members
    return out


def _position_key(f: Frame) -> tuple[float, ...] | None:
    return _round(f.image_position, 3)


def _acquisition_order(f: Frame) -> tuple[Any, ...]:
    """Order in which the scanner made the frames: InstanceNumber, then time, then file."""
    return (
        f.instance_number is None,
        f.instance_number or 0,
        f.acquisition_time or 0.0,
        f.source,
        f.frame_index or 0,
    )


def split_timepoints(frames: list[Frame]) -> tuple[list[list[Frame]], list[Flag]]:
    """Cut frames that repeat slice positions into volumes, in acquisition order.

    Frames first group by what the vendor records per volume (temporal position, acquisition
    number, diffusion b-value and direction, ASL label: :attr:`Frame.volume_key`).  A group that
    still repeats positions is cut by a time all slices of a volume share (trigger time, then
    acquisition time) where one does, and otherwise by acquisition order, as dcm2niix does for classic GE and
    Philips files: the k-th occurrence of every position (by InstanceNumber) belongs to the
    k-th volume, which needs every position to occur equally often.  Raises GeometryError when
    the positions occur unequally.
    """
    counts = Counter(_position_key(f) for f in frames)
    if len(set(counts.values())) > 1:
        lo, hi = min(counts.values()), max(counts.values())
        raise GeometryError(
            f"slice positions repeat unequally ({lo} to {hi} times over {len(counts)} positions): "
            "the frames cannot be cut into complete volumes of equal size (missing or extra "
            "files?)"
        )
    groups: dict[tuple[Any, ...], list[Frame]] = defaultdict(list)
    for f in frames:
        groups[f.volume_key].append(f)
    volumes: list[list[Frame]] = []
    by_order = False
    for members in groups.values():
        per_position = Counter(_position_key(f) for f in members)
        if len(per_position) != len(counts) or len(set(per_position.values())) > 1:
            raise GeometryError(
                "slice positions repeat, and the volumes they belong to do not each cover every "
                "position (temporal position, acquisition number and diffusion tags disagree)"
            )
        repeats = next(iter(per_position.values()))
        if repeats == 1:
            volumes.append(members)
            continue
        by_time = _cut_by_time(members, repeats)
        if by_time is not None:
            volumes.extend(by_time)
            continue
        by_order = True
        seen: Counter[tuple[float, ...] | None] = Counter()
        cut: list[list[Frame]] = [[] for _ in range(repeats)]
        for f in sorted(members, key=_acquisition_order):
            key = _position_key(f)
            cut[seen[key]].append(f)
            seen[key] += 1
        volumes.extend(cut)
    volumes.sort(key=lambda v: (_time_key(v), min(_acquisition_order(f) for f in v)))
    flags = []
    if by_order:
        flags.append(
            Flag(
                "volumes_by_instance_order",
                "repeated slice positions carry no tag that tells their volumes apart; volumes "
                "were cut by acquisition order (InstanceNumber), as dcm2niix does",
            )
        )
    return volumes, flags


def _cut_by_time(members: list[Frame], repeats: int) -> list[list[Frame]] | None:
    """Volumes told apart by a time shared by all their slices (cardiac trigger, acquisition).

    Used only when every group of that time holds every position exactly once: a time that
    differs from slice to slice (slice timing) says nothing about volumes.
    """
    n_positions = len({_position_key(f) for f in members})
    for attribute in ("trigger_time", "acquisition_time"):
        groups: dict[Any, list[Frame]] = defaultdict(list)
        for f in members:
            groups[getattr(f, attribute)].append(f)
        if None in groups or len(groups) != repeats:
            continue
        if all(
            len({_position_key(f) for f in g}) == len(g) == n_positions for g in groups.values()
        ):
            return [groups[k] for k in sorted(groups)]
    return None


def _time_key(volume: list[Frame]) -> tuple[Any, ...]:
    temporal = {f.temporal_position for f in volume}
    value = temporal.pop() if len(temporal) == 1 else None
    return (value is None, value or 0)


def _plan(
    study_uid: str, series_uid: str, split: dict[str, Any], frames: list[Frame]
) -> list[VolumePlan]:
    first = frames[0]
    if first.is_mosaic:
        return plan_mosaic(study_uid, series_uid, split, frames)
    if any(f.image_position is None for f in frames):
        frames = sorted(frames, key=lambda f: (f.dimension_index, f.source, f.frame_index or 0))
    volumes, flags = split_timepoints(frames) if _has_repeated_positions(frames) else ([frames], [])
    geometry = compute_geometry(
        [f.image_position for f in volumes[0]],
        first.image_orientation,
        first.pixel_spacing,
        fallback_slice_spacing=first.slice_spacing,
        gantry_tilt=first.gantry_tilt,
    )
    geometry.flags.extend(flags)
    ordered = [volumes[0][i] for i in geometry.order]
    timepoints: list[TimePoint] = []
    if len(volumes) > 1:
        normal = np.cross(geometry.direction[:, 0], geometry.direction[:, 1])
        for volume in volumes[1:]:
            ordered.extend(
                sorted(volume, key=lambda f: float(np.asarray(f.image_position) @ normal))
            )
        timepoints = timepoints_of(volumes, geometry)
        flipped = [tp.index for tp in timepoints if tp.rows_reversed]
        if flipped:
            geometry.flags.append(
                Flag(
                    "ge_pepolar_reversed",
                    f"GE epi_pepolar (mode {first.pepolar_mode} in private (0019,10B3)): volumes "
                    f"{flipped} were acquired with reversed phase-encoding polarity and stored with "
                    "their rows reversed; flipped back, their phase-encoding direction reversed. "
                    "dcm2niix writes them as a separate series (number + 1000); VoxelHub keeps the "
                    "series whole with the polarity per volume",
                )
            )
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
            timepoints=timepoints,
        )
    ]


def timepoints_of(volumes: list[list[Frame]], geometry: Geometry) -> list[TimePoint]:
    """The acquisition table of a 4-D volume: one row per volume, from its frames' headers.

    ``time`` is the nominal cardiac trigger time where it is constant within each volume, else
    the volume's first acquisition time relative to the first volume's, else ``index × TR``.
    GE ``epi_pepolar`` volumes acquired with reversed polarity are marked ``rows_reversed``.
    """
    rows: list[TimePoint] = []
    starts = [_first_time(v) for v in volumes]
    triggers = [{f.trigger_time for f in v} for v in volumes]
    use_trigger = all(len(t) == 1 and None not in t for t in triggers) and len(
        {next(iter(t)) for t in triggers}
    ) == len(volumes)
    use_start = None not in starts and len(set(starts)) == len(volumes)
    tr = volumes[0][0].repetition_time
    mode = volumes[0][0].pepolar_mode
    for index, volume in enumerate(volumes):
        f = volume[0]
        if use_trigger:
            time: float | None = float(next(iter(triggers[index]))) / 1000.0  # type: ignore[arg-type]
        elif use_start:
            time = float(starts[index] - starts[0])  # type: ignore[operator]
        elif tr:
            time = index * tr / 1000.0
        else:
            time = None
        d = f.diffusion
        g_lps, g_img = _gradients(d, geometry)
        reversed_rows = False
        direction = None
        if mode is not None:
            from voxelhub.dicom.acquisition import ge_pepolar_reversed

            reversed_rows = ge_pepolar_reversed(mode, index)
            # in the store's axes (j = increasing row index): the forward volumes of the real GE
            # series are "j" in dcm2niix's row-flipped NIfTI, so "j-" here, and vice versa
            direction = "j" if reversed_rows else "j-"
        rows.append(
            TimePoint(
                index=index,
                time=time,
                b_value=None if d is None else d.b_value,
                gradient_lps=g_lps,
                gradient_image=g_img,
                echo_time=None if f.echo_time is None else f.echo_time / 1000.0,
                label=f.asl_label,
                temporal_position=f.temporal_position,
                acquisition_number=f.acquisition_number,
                rows_reversed=reversed_rows,
                phase_encoding_direction=direction,
            )
        )
    return rows


def _first_time(volume: list[Frame]) -> float | None:
    times = [f.acquisition_time for f in volume]
    return None if None in times else min(t for t in times if t is not None)


def _gradients(
    d: Any, geometry: Geometry
) -> tuple[tuple[float, float, float] | None, tuple[float, float, float] | None]:
    """A diffusion direction in patient (LPS) and in image (x, y, z index) axes."""
    if d is None or d.gradient is None:
        return None, None
    g = np.asarray(d.gradient, dtype=float)
    axes = geometry.direction  # columns: unit x, y, z index directions in LPS
    if d.frame == "image":
        lps = axes @ g
        image = g
    else:
        lps = g
        image = np.linalg.solve(axes, g)
    return _vec(lps), _vec(image)


def _vec(v: np.ndarray) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))
