"""What the DICOM edge received: one :class:`Arrival` per study a PACS sent, as curators see it.

The edge (``extensions/voxelhub_dicom``) keeps these records; the data service lists a project's
to its curators (``GET api/arrivals?project=P``), and :meth:`ServiceCatalog.arrivals
<voxelhub.service_catalog.ServiceCatalog.arrivals>` turns them into these objects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class ArrivalState(enum.Enum):
    """Where a study sent by C-STORE is on its way into the catalog."""

    RECEIVING = "receiving"
    """instances still arriving: the study is not stable yet"""
    INGESTING = "ingesting"
    """stable: being checked and converted into the store"""
    INGESTED = "ingested"
    """every instance checked and in the catalog (``volumes``)"""
    PARTIAL = "partial"
    """in the catalog, but some instances were rejected (``rejected`` says why) or the ingest
    failed part-way (``message``)"""
    FAILED = "failed"
    """nothing reached the catalog (``rejected`` and ``message`` say why)"""
    REFUSED = "refused"
    """dropped by the project's filter at the edge, never stored"""

    @property
    def finished(self) -> bool:
        return self not in (ArrivalState.RECEIVING, ArrivalState.INGESTING)


@dataclass(frozen=True)
class Arrival:
    """One study received by the edge, for one project."""

    id: int
    project: str
    state: ArrivalState
    calling_aet: str
    calling_host: str
    called_aet: str
    instances: int
    received_at: str
    updated_at: str
    volumes: tuple[str, ...] = ()
    rejected: tuple[dict[str, Any], ...] = field(default=())
    """``{"instance": …, "reason": …}`` for every instance refused"""
    message: str = ""

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Arrival:
        try:
            state = ArrivalState(row["state"])
        except ValueError:
            state = ArrivalState.FAILED  # a state this client does not know: never shown as fine
        return cls(
            id=int(row["id"]),
            project=str(row["project"]),
            state=state,
            calling_aet=str(row["calling_aet"]),
            calling_host=str(row["calling_host"]),
            called_aet=str(row["called_aet"]),
            instances=int(row["instances"]),
            received_at=str(row["received_at"]),
            updated_at=str(row["updated_at"]),
            volumes=tuple(row.get("volumes") or ()),
            rejected=tuple(row.get("rejected") or ()),
            message=str(row.get("message") or ""),
        )
