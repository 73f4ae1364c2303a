"""Who may do what: roles in projects, from the caller's hub groups, decided at the server.

A project is a hub group.  Membership of group ``P`` makes a user a **viewer** of project
``P``; membership of ``P:analyst`` or ``P:curator`` raises their role in it.  Hub admins may
do everything and are the only ones who may read the audit trail.  Group membership is read
from the hub on every request (cached for a few seconds), so a change an admin makes applies
without restarting anyone's server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

ROLE_SEPARATOR = ":"


class Role(IntEnum):
    """What a member may do in a project; each role includes the ones below it."""

    VIEWER = 1
    """read the project's catalog rows, volumes and labels"""
    ANALYST = 2
    """also write derived data: label images, feature tables"""
    CURATOR = 3
    """also ingest, delete and change de-identification settings"""


def roles_from_groups(groups: Iterable[str]) -> dict[str, Role]:
    """``{project: role}`` from hub group names (``P``, ``P:analyst``, ``P:curator``).

    >>> sorted(roles_from_groups(["lung", "brain:curator", "lung:analyst"]).items())
    [('brain', <Role.CURATOR: 3>), ('lung', <Role.ANALYST: 2>)]
    """
    roles: dict[str, Role] = {}
    for group in groups:
        project, _, suffix = group.partition(ROLE_SEPARATOR)
        if not project:
            continue
        role = {"": Role.VIEWER, "analyst": Role.ANALYST, "curator": Role.CURATOR}.get(suffix)
        if role is None:
            continue  # another kind of group (a course, a team): grants nothing here
        roles[project] = max(role, roles.get(project, role))
    return roles


@dataclass(frozen=True)
class Caller:
    """An authenticated request's identity: hub user, admin flag, project roles, client kind."""

    name: str
    admin: bool
    roles: Mapping[str, Role] = field(default_factory=dict)
    client: str = ""
    """what sent the request: ``kernel``, ``worker``, ``browser`` … (from the client; informative)"""
    source: str = ""
    """the remote address"""

    def role_in(self, project: str) -> Role | None:
        if self.admin:
            return Role.CURATOR
        return self.roles.get(project)

    def may(self, project: str, role: Role) -> bool:
        have = self.role_in(project)
        return have is not None and have >= role

    @property
    def projects(self) -> list[str] | None:
        """Projects this caller may read; None means all (an admin)."""
        return None if self.admin else sorted(self.roles)
