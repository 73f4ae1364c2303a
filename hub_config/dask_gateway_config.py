"""VoxelHub's Dask Gateway, started by JupyterHub as the managed service ``dask-gateway``.

The hub passes ``JUPYTERHUB_API_TOKEN`` / ``_API_URL`` / ``_SERVICE_NAME`` / ``_SERVICE_PREFIX`` and
the ``VOXELHUB_*`` variables below (see ``jupyterhub_config.py``).  Cluster limits can be changed
with ``VOXELHUB_GATEWAY_*`` variables; defaults suit a small server (a 2-core machine still runs
two users' 2-worker clusters).

===================================  ======================================================
``VOXELHUB_HUB_STATE``               clusters' working folders go below ``<state>/dask-clusters``
``VOXELHUB_HUB_SPAWNER``             ``system``: schedulers and workers run as the requesting
                                     unix user (gateway runs as root), without dashboards, in
                                     the user's cgroup; ``simple``: as the gateway's user
                                     (laptop without root only)
``VOXELHUB_HUB_SESSIONS``            the hub's folder of running users' limits (``system``)
``VOXELHUB_GATEWAY_PORT``            public HTTP + scheduler proxy port [8010]
``VOXELHUB_GATEWAY_API_PORT``        private API port [8011]
``VOXELHUB_GATEWAY_WORKER_CORES``    cores per worker [1]
``VOXELHUB_GATEWAY_WORKER_MEMORY``   memory per worker [2 G]
``VOXELHUB_GATEWAY_MAX_WORKERS``     most workers in one cluster [4]
``VOXELHUB_GATEWAY_MAX_CLUSTERS``    most active clusters per user [2]
``VOXELHUB_GATEWAY_IDLE_TIMEOUT``    seconds before an idle cluster is shut down [1800]
``VOXELHUB_GATEWAY_GROUP_LIMITS``    JSON caps per hub group, e.g. a course's students:
                                     ``{"mri101:students": {"max_workers": 1, "max_cores":
                                     2, "max_memory": "3 G"}}`` (totals, scheduler included;
                                     ``voxelhub_hub.gateway_limits``)
===================================  ======================================================
"""

from __future__ import annotations

import os
import sys

c = get_config()  # type: ignore[name-defined]  # noqa: F821

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "extensions"))

env = os.environ.get
VENV_BIN = os.path.dirname(sys.executable)
STATE = os.path.abspath(env("VOXELHUB_HUB_STATE") or os.getcwd())
SPAWNER = env("VOXELHUB_HUB_SPAWNER", "system")
GATEWAY_PORT = int(env("VOXELHUB_GATEWAY_PORT", "8010"))
GATEWAY_API_PORT = int(env("VOXELHUB_GATEWAY_API_PORT", "8011"))

# ---- network: everything on loopback; the hub's proxy routes /services/dask-gateway/ here --------
c.Proxy.address = f"127.0.0.1:{GATEWAY_PORT}"  # HTTP API + TLS scheduler traffic (SNI-routed)
c.Proxy.prefix = env("JUPYTERHUB_SERVICE_PREFIX", "/services/dask-gateway/")
c.DaskGateway.address = f"127.0.0.1:{GATEWAY_API_PORT}"

# ---- authentication: the caller's JupyterHub token; the hub decides who may use the gateway -----
# (tokens need access:services!service=dask-gateway, granted to project groups by a hub role)
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"

# ---- backend: local processes ------------------------------------------------------------------
if SPAWNER == "system":
    # schedulers and workers run as the requesting unix user.  NOT the stock LocalBackend: its
    # 2026.3.0 release chowns "/" to the user when run as root (see voxelhub_hub.gateway_backend).
    c.DaskGateway.backend_class = "voxelhub_hub.gateway_backend.SafeLocalBackend"
    backend = "SafeLocalBackend"
else:
    # !!! LAPTOP WITHOUT ROOT ONLY: clusters run as the gateway's own user, no isolation.
    c.DaskGateway.backend_class = "voxelhub_hub.gateway_backend.LaptopLocalBackend"
    backend = "LaptopLocalBackend"
clusters = os.path.join(STATE, "dask-clusters")
os.makedirs(clusters, exist_ok=True)
os.chmod(clusters, 0o711)  # users reach their own cluster folder (0700, theirs) but list nothing
c[backend].clusters_directory = clusters
if SPAWNER == "system":
    # workers join their user's cgroup with their server's rlimits (written there by the hub);
    # a user without a running server gets no cluster
    c[backend].session_dir = env("VOXELHUB_HUB_SESSIONS", "")
c[backend].max_clusters_per_user = int(env("VOXELHUB_GATEWAY_MAX_CLUSTERS", "2"))
# stop processes gently: SIGINT, then SIGTERM, then SIGKILL, each after a timeout
c[backend].sigint_timeout = 10
c[backend].sigterm_timeout = 5
c[backend].sigkill_timeout = 5
# the in-memory database (the default) means clusters never outlive the gateway
c[backend].db_url = "sqlite://"
c[backend].stop_clusters_on_shutdown = True

# ---- clusters -------------------------------------------------------------------------------------
# distributed 2026.x has no dask-scheduler / dask-worker scripts, only `dask scheduler|worker`
c.ClusterConfig.scheduler_cmd = [os.path.join(VENV_BIN, "dask"), "scheduler"]
c.ClusterConfig.worker_cmd = [os.path.join(VENV_BIN, "dask"), "worker"]
c.ClusterConfig.scheduler_cores = 1
c.ClusterConfig.scheduler_memory = "1 G"
c.ClusterConfig.worker_cores = int(env("VOXELHUB_GATEWAY_WORKER_CORES", "1"))
c.ClusterConfig.worker_memory = env("VOXELHUB_GATEWAY_WORKER_MEMORY", "2 G")
c.ClusterConfig.cluster_max_workers = int(env("VOXELHUB_GATEWAY_MAX_WORKERS", "4"))
c.ClusterConfig.idle_timeout = float(env("VOXELHUB_GATEWAY_IDLE_TIMEOUT", "1800"))
# clients scale adaptively with cluster.adapt(); the scheduler re-checks this often (seconds)
c.ClusterConfig.adaptive_period = 3.0

# ---- per-group caps (issue 12): a course's students get fewer workers than a research group ------
if env("VOXELHUB_GATEWAY_GROUP_LIMITS"):
    from dask_gateway_server.options import Options
    from voxelhub_hub.gateway_limits import cluster_overrides, parse_group_caps

    _caps = parse_group_caps(env("VOXELHUB_GATEWAY_GROUP_LIMITS", ""))
    c[backend].cluster_options = Options(
        handler=lambda _options, user: cluster_overrides(user.groups, _caps)
    )
