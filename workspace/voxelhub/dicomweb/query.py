"""Which instances a pull brings: a QIDO-RS study query, then the series and instances of each.

A query names studies by the usual criteria (patient, study date or range, modality,
accession number, study UID) or by any other DICOM keyword; a pull with no criterion at all
would copy a whole archive and is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from voxelhub.dicomweb.errors import EmptyQuery, QueryError, TooManyStudies

if TYPE_CHECKING:
    from voxelhub.dicomweb.server import Server

_DATE_RANGE = re.compile(r"^(\d{8})?(-(\d{8})?)?$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"


_PAGE = 1000


def _value(item: Mapping[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _all_items(
    search: Callable[..., list[dict[str, Any]]], tag: str, **kwargs: Any
) -> dict[str, dict[str, Any]]:
    """Every item ``search`` finds, by its UID in ``tag``, page by page.

    Not dicomweb-client's ``get_remaining``: it asks until a page comes back empty, which never
    happens on a server that ignores ``offset`` (Orthanc's DICOMweb 1.7 at instance level).
    Here a short page, or one with nothing new, ends it.
    """
    seen: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        found = search(limit=_PAGE, offset=offset, **kwargs)
        new = 0
        for item in found:
            uid = _value(item, tag)
            if uid and uid not in seen:
                seen[uid] = item
                new += 1
        if len(found) < _PAGE or not new:
            return seen
        offset += len(found)


def _all_uids(search: Callable[..., list[dict[str, Any]]], tag: str, **kwargs: Any) -> list[str]:
    return sorted(_all_items(search, tag, **kwargs))


@dataclass(frozen=True)
class StudyQuery:
    """QIDO-RS criteria; ``modality`` also keeps only the series of that modality."""

    patient_id: str | None = None
    study_date: str | None = None
    """``YYYYMMDD``, or a range ``YYYYMMDD-YYYYMMDD`` (either end may be left open)."""
    modality: str | None = None
    accession: str | None = None
    study_uid: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    """Any other attribute by DICOM keyword, e.g. ``{"PatientName": "DOE^J*"}``."""

    def filters(self) -> dict[str, str]:
        """The study-level QIDO-RS search filters; :class:`QueryError` if one is malformed."""
        from pydicom.datadict import tag_for_keyword

        given = {
            "PatientID": self.patient_id,
            "StudyDate": self.study_date,
            "ModalitiesInStudy": self.modality,
            "AccessionNumber": self.accession,
            "StudyInstanceUID": self.study_uid,
            **dict(self.extra),
        }
        filters = {k: str(v) for k, v in given.items() if v not in (None, "")}
        for keyword in filters:
            if tag_for_keyword(keyword) is None:
                raise QueryError(f"unknown DICOM attribute keyword in the query: {keyword!r}")
        date = filters.get("StudyDate")
        if date is not None and (date == "-" or not _DATE_RANGE.match(date)):
            raise QueryError(
                f"study date {date!r}: use YYYYMMDD or a range YYYYMMDD-YYYYMMDD "
                "(either end may be open)"
            )
        uid = filters.get("StudyInstanceUID")
        if uid is not None and not _UID.match(uid):
            raise QueryError(f"study UID {uid!r} is not a DICOM UID (digits and dots)")
        if not filters:
            raise QueryError(
                "give at least one criterion (patient ID, study date, modality, accession, "
                "study UID or another attribute): a pull never copies a whole archive"
            )
        return filters

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in sorted(self.filters().items()))

    def canonical(self) -> str:
        """A stable text of the criteria (the pull's identity, with the server and project)."""
        return json.dumps(self.filters(), sort_keys=True)


@dataclass(frozen=True)
class StudySummary:
    """One study a query found, as QIDO-RS describes it (for choosing before a pull)."""

    uid: str
    patient_id: str
    date: str
    description: str
    modalities: tuple[str, ...]
    instances: int | None

    @classmethod
    def from_qido(cls, item: Mapping[str, Any]) -> StudySummary:
        count = _value(item, "00201208")
        return cls(
            uid=_value(item, _STUDY_UID),
            patient_id=_value(item, "00100020"),
            date=_value(item, "00080020"),
            description=_value(item, "00081030"),
            modalities=tuple(str(v) for v in item.get("00080061", {}).get("Value") or ()),
            instances=int(count) if count.isdigit() else None,
        )

    def line(self) -> str:
        count = "?" if self.instances is None else str(self.instances)
        return (
            f"{self.uid}  {self.date or '-':8}  {'/'.join(self.modalities) or '-':8}  "
            f"{count:>6} instance(s)  patient {self.patient_id or '-'}  {self.description}"
        )


_STUDY_FIELDS = ["StudyInstanceUID", "PatientID", "StudyDate", "StudyDescription",
                 "ModalitiesInStudy", "NumberOfStudyRelatedInstances"]  # fmt: skip


def find_studies(server: Server, query: StudyQuery) -> list[StudySummary]:
    """The studies ``query`` selects (QIDO-RS), sorted by date then UID; EmptyQuery if none."""
    filters = query.filters()
    with server.speaking("QIDO-RS study search"):
        found = _all_items(
            server.client().search_for_studies,
            _STUDY_UID,
            search_filters=filters,
            fields=_STUDY_FIELDS,
        )
    if not found:
        raise EmptyQuery(f"no study on {server.url} matches {query.describe()}")
    studies = [StudySummary.from_qido(item) for item in found.values()]
    return sorted(studies, key=lambda s: (s.date, s.uid))


@dataclass(frozen=True)
class InstanceRef:
    study: str
    series: str
    sop: str


@dataclass
class PullPlan:
    studies: list[str]
    instances: list[InstanceRef]


def plan_pull(server: Server, query: StudyQuery, *, max_studies: int = 50) -> PullPlan:
    """Every instance the query selects, asked for with QIDO-RS (studies → series → instances)."""
    studies = sorted(s.uid for s in find_studies(server, query))
    client = server.client()
    if len(studies) > max_studies:
        raise TooManyStudies(
            f"{len(studies)} studies on {server.url} match {query.describe()}, more than the "
            f"{max_studies} allowed: narrow the query or raise --max-studies"
        )
    instances: list[InstanceRef] = []
    for study in studies:
        series_filters = {"Modality": query.modality} if query.modality else None
        with server.speaking(f"QIDO-RS series search in study {study}"):
            series = _all_uids(
                client.search_for_series,
                _SERIES_UID,
                study_instance_uid=study,
                search_filters=series_filters,
            )
        for uid in series:
            with server.speaking(f"QIDO-RS instance search in series {uid}"):
                sops = _all_uids(
                    client.search_for_instances,
                    _SOP_UID,
                    study_instance_uid=study,
                    series_instance_uid=uid,
                    fields=[_SOP_UID],
                )
            instances.extend(InstanceRef(study, uid, sop) for sop in sops)
    if not instances:
        raise EmptyQuery(
            f"{len(studies)} study(ies) on {server.url} match {query.describe()} but hold no "
            f"instance{' of modality ' + query.modality if query.modality else ''}"
        )
    return PullPlan(studies, instances)
