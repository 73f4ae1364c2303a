"""Test helpers for the unix accounts and groups the hub tests create and must remove."""

from __future__ import annotations

import grp
import pwd


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True
