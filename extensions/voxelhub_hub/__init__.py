"""VoxelHub's hub-side helpers: the pieces ``hub_config/*.py`` load into JupyterHub and Dask Gateway.

- :mod:`voxelhub_hub.gateway_backend`: a Dask Gateway local backend that is safe to run as root.
- :mod:`voxelhub_hub.system_users`: unix accounts created on demand for hub users (spawner hook).
- :mod:`voxelhub_hub.cluster_cleanup`: a user's Gateway clusters stop when their server stops.
- :mod:`voxelhub_hub.tls`: the self-signed certificate ``make hub-demo`` makes on first run.
- :mod:`voxelhub_hub.stack` / :mod:`voxelhub_hub.client`: start the stack on free ports and drive it
  over HTTP the way a browser does (used by the end-to-end tests and the demo).

This package may import :mod:`voxelhub`; :mod:`voxelhub` never imports it.
"""

from __future__ import annotations
