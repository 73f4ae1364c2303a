"""Per-course caps on Dask Gateway workers (issue 12), through the gateway's own config path.

The gateway config file is loaded as ``dask-gateway-server -f`` loads it, and a cluster request
goes through the real backend's ``process_cluster_options`` (what the gateway runs for every new
cluster) for users in and out of the capped course group.  No gateway process is started.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from traitlets.config.loader import PyFileConfigLoader

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "extensions"))

from voxelhub_hub.gateway_limits import (  # noqa: E402
    GatewayLimitsError,
    cluster_overrides,
    parse_group_caps,
)

CAPS = {
    # cores and memory count the scheduler's too (1 core, 1 G here): room for one 2 G worker
    "mri101:students": {"max_workers": 1, "max_cores": 2, "max_memory": "3 G"},
    "bigclass:students": {"max_workers": 2},
}


def _gateway_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caps: str) -> object:
    monkeypatch.setenv("VOXELHUB_HUB_STATE", str(tmp_path))
    monkeypatch.setenv("VOXELHUB_HUB_SPAWNER", "simple")  # no session folder needed
    monkeypatch.setenv("VOXELHUB_GATEWAY_MAX_WORKERS", "4")
    monkeypatch.setenv("VOXELHUB_GATEWAY_GROUP_LIMITS", caps)
    loader = PyFileConfigLoader("dask_gateway_config.py", path=str(REPO / "hub_config"))
    return loader.load_config()


def test_a_course_student_gets_the_course_caps_and_a_researcher_the_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dask_gateway_server.backends.base import Backend
    from dask_gateway_server.models import User

    config = _gateway_config(monkeypatch, tmp_path, json.dumps(CAPS))
    backend = Backend(config=config)
    backend.cluster_options = config.LaptopLocalBackend.cluster_options  # type: ignore[attr-defined]

    def cluster_config(*groups: str) -> object:
        user = User("someone", groups=list(groups))
        _, cfg = asyncio.run(backend.process_cluster_options(user, {}))
        return cfg

    student = cluster_config("mri101:students", "mri101")
    assert student.cluster_max_workers == 1  # type: ignore[attr-defined]
    assert student.cluster_max_cores == 2  # type: ignore[attr-defined]
    assert student.cluster_max_memory == 3 * 2**30  # type: ignore[attr-defined]
    researcher = cluster_config("mri101", "neuro:analyst")
    assert researcher.cluster_max_workers == 4  # type: ignore[attr-defined]  # the default
    assert researcher.cluster_max_cores is None  # type: ignore[attr-defined]
    both = cluster_config("bigclass:students", "mri101:students")
    assert both.cluster_max_workers == 1  # type: ignore[attr-defined]  # the smaller cap


def test_bad_caps_are_named() -> None:
    cases = {
        "{not json": "not JSON",
        '["mri101:students"]': "expected {group",
        '{"g": {"max_worker": 1}}': "unknown caps ['max_worker']",
        '{"g": {"max_workers": "two"}}': "max_workers must be a number",
        '{"g": {"max_workers": 0}}': "must be positive",
        '{"g": {"max_workers": 1.5}}': "must be whole",
        '{"g": {"max_memory": "lots"}}': "is not a size",
        '{"g": 3}': "expected an object",
    }
    for text, message in cases.items():
        with pytest.raises(GatewayLimitsError, match=message.replace("[", r"\[")):
            parse_group_caps(text)
    assert parse_group_caps("") == {}
    assert cluster_overrides(["x"], parse_group_caps(json.dumps(CAPS))) == {}
