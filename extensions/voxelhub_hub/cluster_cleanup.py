"""Stop a user's Dask Gateway clusters when their server stops (a ``Spawner.post_stop_hook``).

Idle clusters are also stopped by the gateway itself (``ClusterConfig.idle_timeout``); this hook
makes "stop my server" (or the idle culler stopping it) free the user's workers at once.  It runs
inside the hub: it mints a 2-minute token for the user, scoped to the gateway only, lists the
user's clusters through the gateway's REST API and stops each, then revokes the token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

log = logging.getLogger(__name__)


def make_cluster_cleanup(
    gateway_api: str, service: str = "dask-gateway"
) -> Callable[[Any], Awaitable[None]]:
    """A post-stop hook stopping the user's clusters at ``gateway_api`` (``…/services/dask-gateway``)."""
    base = gateway_api.rstrip("/") + "/api/v1/clusters/"

    async def stop_user_clusters(spawner: Any) -> None:
        user = spawner.user
        try:
            token = user.new_api_token(
                note="voxelhub: stop clusters on server stop",
                scopes=[f"access:services!service={service}"],
                expires_in=120,
            )
        except Exception:  # the user may not be allowed to use the gateway at all
            spawner.log.debug("no gateway access for %s; no clusters to stop", user.name)
            return
        client = AsyncHTTPClient()
        headers = {"Authorization": f"jupyterhub {token}"}
        try:
            r = await client.fetch(HTTPRequest(base, headers=headers, request_timeout=20))
            names = list(json.loads(r.body))
            for name in names:
                await client.fetch(
                    HTTPRequest(base + name, method="DELETE", headers=headers, request_timeout=20)
                )
            if names:
                spawner.log.info("stopped %d gateway cluster(s) of %s", len(names), user.name)
        except ConnectionRefusedError:  # the gateway is already down (hub shutdown)
            spawner.log.debug("gateway down; no clusters of %s to stop", user.name)
        except Exception as exc:  # never block a server stop on the gateway
            spawner.log.warning("could not stop gateway clusters of %s: %s", user.name, exc)
        finally:
            _revoke(user, token)

    return stop_user_clusters


def _revoke(user: Any, token: str) -> None:
    try:
        from jupyterhub import orm

        db = user.db
        found = orm.APIToken.find(db, token)
        if found is not None:
            db.delete(found)
            db.commit()
    except Exception:  # pragma: no cover - it expires in two minutes anyway
        log.debug("token revocation failed", exc_info=True)
