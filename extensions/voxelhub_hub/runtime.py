"""What hub users' processes run, copied where they can read it when the checkout is private.

A checkout under ``/root`` (or any folder without ``o+x``) cannot be entered by the unix users the
hub starts servers as, nor by the data service's account.  ``make install`` then builds the venv
outside the checkout (``/opt/voxelhub/<hash>/venv``, see the Makefile), and the hub, at every
start, publishes the little they need from the checkout into ``<state>/runtime``: the
``voxelhub`` package, the hub extensions and the Jupyter configuration, readable by all and
writable by root only.  Servers and services get it first on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: what is copied, relative to the checkout
PARTS = ("workspace/voxelhub", "extensions", "hub_config/jupyter")


def publish(repo: str | os.PathLike[str], runtime: str | os.PathLike[str]) -> Path:
    """Copy :data:`PARTS` of ``repo`` to ``runtime`` (replaced whole; 0755 folders, 0644 files).

    Written into a sibling folder first and then renamed into place (the hub publishes before it
    starts any server, so nothing reads a half-written copy).
    """
    target = Path(runtime)
    staging = target.with_name(target.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache")
    for part in PARTS:
        shutil.copytree(Path(repo) / part, staging / part, ignore=ignore, symlinks=False)
    for folder, _dirs, files in os.walk(staging):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)
    return target
