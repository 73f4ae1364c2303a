"""A data-only hub token for a course's grader server, for its sandboxed grading kernels.

Submitted code runs in autograding kernels that never see the grader server's own token
(``voxelhub.grading_sandbox``).  An exercise may still read the course cohort through the data
service, so at each spawn of a grader account the hub makes that account a token whose only
scope is calling the data service, and puts it in the server's environment as
``$VOXELHUB_GRADING_DATA_TOKEN``; the sandbox hands it to each kernel as
``$JUPYTERHUB_API_TOKEN``.  The hub API and the exchange refuse it.  The previous one is
revoked at each spawn, and each expires after ``expires_in`` seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

NOTE = "grading kernels: data service only"
VARIABLE = "VOXELHUB_GRADING_DATA_TOKEN"  # voxelhub.grading_sandbox.DATA_TOKEN_VARIABLE
#: the data service reads who the caller is; their groups it asks of the hub itself
SCOPES = ["access:services!service=voxelhub-data", "read:users:name!user"]


def is_grader(user: Any) -> bool:
    """A course's grader account: named as such in its course groups' properties."""
    return any((g.properties or {}).get("grader") == user.name for g in user.groups)


def with_grading_token(
    hook: Callable[[Any], None], expires_in: int = 14 * 24 * 3600
) -> Callable[[Any], None]:
    """Wrap a ``Spawner.pre_spawn_hook``: a grader's server gets a fresh data-only token."""

    def pre_spawn(spawner: Any) -> None:
        hook(spawner)
        user = spawner.user
        if not is_grader(user):
            return
        for old in [t for t in user.orm_user.api_tokens if t.note == NOTE]:
            user.db.delete(old)
        user.db.commit()
        token = user.new_api_token(note=NOTE, scopes=SCOPES, expires_in=expires_in)
        spawner.environment = {**spawner.environment, VARIABLE: token}
        log.info("%s: a data-only token for its grading kernels", user.name)

    pre_spawn.__qualname__ = pre_spawn.__name__ = "voxelhub_pre_spawn_grading_token"
    pre_spawn.__wrapped__ = hook  # type: ignore[attr-defined]  # what it runs first
    return pre_spawn
