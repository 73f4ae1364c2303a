"""voxelhub.compute.client(): a LocalCluster off the hub, the Gateway when the hub configured one."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import dask.array as da
import pytest

from voxelhub import compute


@pytest.fixture
def fresh() -> Iterator[None]:
    compute._current = None
    yield
    if compute._current is not None:
        cluster = compute._current.cluster
        compute._current.close()
        if cluster is not None:
            cluster.close()
        compute._current = None


def test_local_cluster_off_the_hub(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(compute.GATEWAY_ENV, raising=False)
    assert compute.gateway_address() is None
    c = compute.client(minimum=1, maximum=2)
    assert type(c.cluster).__name__ == "LocalCluster"
    assert c.dashboard_link.startswith("http://127.0.0.1:")
    assert compute.client() is c  # reused by later calls in the same kernel
    x = da.ones((64, 64), chunks=16)
    assert float(x.sum().compute()) == 64 * 64


def test_gateway_is_chosen_when_the_hub_set_its_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(compute.GATEWAY_ENV, "http://127.0.0.1:1/services/dask-gateway")
    assert compute.gateway_address() == "http://127.0.0.1:1/services/dask-gateway"
    calls = []

    def fake_gateway_client(lo: int, hi: int | None, opts: dict[str, object]) -> SimpleNamespace:
        calls.append((lo, hi, opts))
        return SimpleNamespace(
            status="running", dashboard_link="/services/dask-gateway/clusters/x/status"
        )

    monkeypatch.setattr(compute, "_gateway_client", fake_gateway_client)
    monkeypatch.setattr(compute, "_current", None)
    c = compute.client(minimum=0, maximum=3, worker_memory=4)
    assert calls == [(0, 3, {"worker_memory": 4})]
    assert compute.client() is c


@pytest.mark.parametrize(("lo", "hi"), [(-1, None), (3, 2), (0, 0)])
def test_bad_bounds(lo: int, hi: int | None) -> None:
    with pytest.raises(ValueError, match="minimum"):
        compute.client(minimum=lo, maximum=hi, new=True)
