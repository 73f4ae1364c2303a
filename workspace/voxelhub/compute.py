"""The Dask client for analyses: a Dask Gateway cluster on the hub, a LocalCluster elsewhere.

::

    from voxelhub.compute import client
    c = client()        # on the hub: Gateway cluster, adaptive workers; laptop: LocalCluster
    c                   # in a notebook: the dashboard link

On the hub every user server carries ``DASK_GATEWAY__ADDRESS`` (and the proxy, public address and
auth type) in its environment, so ``client()`` needs no arguments; the gateway decides who may
start clusters and how large they may grow.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

#: environment variable (read by dask's config as ``gateway.address``) that marks a hub server
GATEWAY_ENV = "DASK_GATEWAY__ADDRESS"

_current: Client | None = None


def gateway_address() -> str | None:
    """The Dask Gateway address configured for this kernel, or ``None`` off the hub."""
    import dask.config

    value = dask.config.get("gateway.address", default=None) or os.environ.get(GATEWAY_ENV)
    return str(value) if value else None


def machine_cores() -> int:
    """Cores this process may use (CPU affinity, so a container's or cgroup's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def client(
    minimum: int = 1,
    maximum: int | None = None,
    *,
    use_gateway: bool | None = None,
    new: bool = False,
    **cluster_options: Any,
) -> Client:
    """A ``distributed.Client`` for this kernel, created on first call and reused after that.

    Parameters
    ----------
    minimum, maximum
        Adaptive scaling bounds in workers.  On the hub ``maximum=None`` means the gateway's
        per-cluster limit (``ClusterConfig.cluster_max_workers``); locally it means one worker per
        core (at most 8).
    use_gateway
        Force (``True``) or forbid (``False``) Dask Gateway; default: use it when
        ``$DASK_GATEWAY__ADDRESS`` / ``gateway.address`` is configured, i.e. on the hub.
    new
        Make a new cluster even if this kernel already has a running client.
    **cluster_options
        Gateway cluster options (e.g. ``worker_memory=4``) where the gateway exposes them.

    Returns
    -------
    distributed.Client
        Its notebook representation shows the dashboard link.
    """
    global _current
    if not new and _current is not None and _current.status == "running":
        return _current
    if minimum < 0 or (maximum is not None and maximum < max(minimum, 1)):
        raise ValueError(f"need 0 <= minimum <= maximum, got minimum={minimum}, maximum={maximum}")
    on_hub = gateway_address() is not None if use_gateway is None else use_gateway
    _current = (
        _gateway_client(minimum, maximum, cluster_options)
        if on_hub
        else _local_client(minimum, maximum)
    )
    log.info("Dask dashboard: %s", _current.dashboard_link)
    return _current


def _gateway_client(minimum: int, maximum: int | None, options: dict[str, Any]) -> Client:
    from dask_gateway import Gateway

    gateway = Gateway()  # address, proxy, auth from dask config / environment
    cluster = gateway.new_cluster(**options) if options else gateway.new_cluster()
    if maximum is None:
        cluster.adapt(minimum=minimum)
    else:
        cluster.adapt(minimum=minimum, maximum=maximum)
    log.info("Dask Gateway cluster %s (adaptive %s..%s workers)", cluster.name, minimum, maximum)
    return cluster.get_client(set_as_default=True)


def shared_machine() -> bool:
    """True in a server the hub started (other unix users share this machine's loopback)."""
    return bool(os.environ.get("JUPYTERHUB_USER"))


def _local_client(minimum: int, maximum: int | None) -> Client:
    from distributed import Client, LocalCluster

    cores = machine_cores()
    upper = maximum if maximum is not None else min(cores, 8)
    shared = shared_machine()
    cluster = LocalCluster(
        n_workers=max(minimum, 1),
        threads_per_worker=max(1, cores // max(upper, 1)),
        processes=True,
        host="127.0.0.1",
        # On a shared machine every local user can connect to 127.0.0.1: a scheduler without
        # TLS would run their tasks as you, and a dashboard would show them your work.  Mutual
        # TLS with throw-away certificates (only this kernel holds them) and no dashboard there.
        security=True if shared else None,
        dashboard_address=None if shared else "127.0.0.1:0",  # any free port on a laptop
    )
    cluster.adapt(minimum=minimum, maximum=upper)
    return Client(cluster, set_as_default=True)
