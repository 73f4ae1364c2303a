"""The service's side of the audit trail: every decision through one small object.

The log itself (hash chain, aggregation of chunk reads per user, volume and minute,
verification) is :mod:`voxelhub.audit`; this adapter only fills in what the service knows.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from voxelhub import audit


class AuditTrail:
    def __init__(self, path: str) -> None:
        self.path = path
        self.log = audit.AuditLog(path)

    def decision(
        self, *, action: str, decision: str, user: str = "", client: str = "", **fields: Any
    ) -> None:
        """One allowed or denied request, written at once (denials are fsynced)."""
        self.log.record(user=user, client=client, action=action, decision=decision, **fields)

    def read(self, *, user: str, client: str, volume: str, nbytes: int, **fields: Any) -> None:
        """An allowed chunk read, counted into its (user, volume, minute) record."""
        self.log.read(user=user, client=client, volume=volume, nbytes=nbytes, **fields)

    def flush_due(self) -> None:
        self.log.flush_due()

    def close(self) -> None:
        self.log.close()

    def query(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """Records matching the filters (pending aggregates are written first)."""
        self.log.flush()
        return [asdict(r) for r in audit.query(self.path, **args)]
