"""Dask Gateway caps per hub group (issue 12): a course's students get fewer workers.

Memory and CPU of a user's processes come from the hub's group limits (``ResourceLimits``,
``$VOXELHUB_HUB_GROUP_LIMITS``); what those cannot say is how many Gateway workers one student
may start, so that a class of 30 scaling out at once leaves cores for a research group.  The
gateway asks :func:`cluster_overrides` for every new cluster with the requesting user's hub
groups (the gateway's JupyterHub authenticator reads them from the user's token) and applies
the result as ``ClusterConfig`` overrides, which the gateway then enforces on every scale
request.  A user in several capped groups gets the smallest cap of each kind.

Set as JSON, e.g. ``{"mri101:students": {"max_workers": 1, "max_cores": 2, "max_memory":
"3 G"}}`` (``$VOXELHUB_GATEWAY_GROUP_LIMITS`` on one machine).  Cores and memory are the
gateway's per-cluster totals and count the scheduler too (1 core, 1 G here): a cap of 1 core
leaves no room for any worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from dask_gateway_server.traitlets import MemoryLimit


class GatewayLimitsError(ValueError):
    """The per-group Gateway caps are not valid settings."""


@dataclass(frozen=True)
class GroupCaps:
    """What one group's members may use per cluster; None: the gateway's default."""

    max_workers: int | None = None
    max_cores: float | None = None
    max_memory: int | None = None  # bytes

    @classmethod
    def parse(cls, group: str, raw: Any) -> GroupCaps:
        if not isinstance(raw, Mapping):
            raise GatewayLimitsError(f"group {group!r}: expected an object, got {raw!r}")
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise GatewayLimitsError(
                f"group {group!r}: unknown caps {sorted(unknown)} (known: {sorted(known)})"
            )
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "max_memory":
                try:
                    value = MemoryLimit().validate(None, value)
                except Exception:
                    raise GatewayLimitsError(
                        f"group {group!r}: max_memory {value!r} is not a size like '2 G'"
                    ) from None
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise GatewayLimitsError(f"group {group!r}: {key} must be a number, not {value!r}")
            if value <= 0:
                raise GatewayLimitsError(f"group {group!r}: {key} must be positive, not {value}")
            if key == "max_workers" and value != int(value):
                raise GatewayLimitsError(f"group {group!r}: max_workers must be whole")
            values[key] = int(value) if key != "max_cores" else float(value)
        return cls(**values)


def parse_group_caps(text: str) -> dict[str, GroupCaps]:
    """``$VOXELHUB_GATEWAY_GROUP_LIMITS`` (JSON) as caps per group; empty text: none."""
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GatewayLimitsError(f"Gateway group limits are not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise GatewayLimitsError("Gateway group limits: expected {group: {cap: value}}")
    return {group: GroupCaps.parse(group, value) for group, value in raw.items()}


def cluster_overrides(groups: Iterable[str], caps: Mapping[str, GroupCaps]) -> dict[str, Any]:
    """``ClusterConfig`` overrides for a user in ``groups``: the smallest cap of each kind."""
    mine = [caps[g] for g in sorted(set(groups)) if g in caps]
    out: dict[str, Any] = {}
    for cap, trait in (
        ("max_workers", "cluster_max_workers"),
        ("max_cores", "cluster_max_cores"),
        ("max_memory", "cluster_max_memory"),
    ):
        values = [getattr(c, cap) for c in mine if getattr(c, cap) is not None]
        if values:
            out[trait] = min(values)
    return out
