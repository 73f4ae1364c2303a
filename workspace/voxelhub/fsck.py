"""Consistency of a store with its catalog: find, and optionally repair, what crashes leave.

The catalog row is the commit point of a volume.  A crash can leave (1) a temporary tree under
``.tmp/`` and (2) a complete volume tree that no catalog row lists (moved into place, row not yet
committed; or an old version whose replacement was committed).  Neither is ever visible through
the catalog; :func:`collect_garbage` removes both once they are older than a grace period, so a
concurrent ingest's fresh trees are left alone.  :func:`check_store` also reports rows whose tree
is missing and, with ``verify=True``, trees whose voxels no longer match their checksum.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from voxelhub.catalog import Catalog
from voxelhub.store.location import Location

log = logging.getLogger(__name__)

GRACE_SECONDS = 3600.0
"""Unlisted trees younger than this may belong to an ingest running right now."""


@dataclass
class StoreCheck:
    """What :func:`check_store` found (and removed, when repairing)."""

    temporaries: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        """Every listed volume is present (and verified, if asked); nothing unlisted remains."""
        leftover = set(self.temporaries + self.unlisted) - set(self.removed)
        return not (leftover or self.missing or self.corrupt)

    def summary(self) -> str:
        return (
            f"{len(self.missing)} missing, {len(self.corrupt)} corrupt, "
            f"{len(self.unlisted)} unlisted tree(s), {len(self.temporaries)} temporary tree(s), "
            f"{len(self.removed)} removed"
        )


def collect_garbage(
    location: Location, catalog: Catalog, *, min_age_seconds: float = GRACE_SECONDS
) -> list[str]:
    """Remove temporaries and unlisted volume trees older than ``min_age_seconds``."""
    removed = location.clean_temporary(min_age_seconds)
    listed = catalog.store_paths()
    for rel in location.list_volumes():
        if rel not in listed and location.age_seconds(rel) >= min_age_seconds:
            location.remove(rel)
            removed.append(rel)
    return removed


def _same_checksum(level0: Any, checksum: str) -> bool:
    from voxelhub.store.encryption import CorruptChunk
    from voxelhub.store.writer import content_checksum

    try:
        return bool(content_checksum(level0) == checksum)
    except CorruptChunk:  # a changed chunk of an encrypted volume
        return False


def check_store(
    location: Location,
    catalog: Catalog,
    *,
    repair: bool = False,
    verify: bool = False,
    min_age_seconds: float = GRACE_SECONDS,
    key_file: str | None = None,
) -> StoreCheck:
    """Compare the store with the catalog; with ``repair``, collect the garbage.

    ``verify`` re-reads every listed volume's level 0 and compares its checksum (slow: it reads
    the whole store).  Missing or corrupt volumes are only reported: their source DICOM must be
    ingested again.  Encrypted projects are verified with the master key file (``key_file``,
    default ``$VOXELHUB_KEY_FILE``); a chunk that fails authentication makes its volume corrupt.
    """
    import zarr

    check = StoreCheck()
    listed = catalog.series()
    projects = catalog.projects()
    if verify and not projects.empty and projects.encrypted.any():
        from voxelhub.store.encryption import open_store_keys

        open_store_keys(location, key_file)
    paths = set(listed["store_path"]) if not listed.empty else set()
    check.temporaries = location.list_temporary()
    check.unlisted = [rel for rel in location.list_volumes() if rel not in paths]
    for rel, checksum in zip(listed.get("store_path", []), listed.get("checksum", []), strict=True):
        rel = str(rel)
        if not location.exists(rel):
            check.missing.append(rel)
        elif verify:
            level0 = location.open_group(rel)["0"]
            assert isinstance(level0, zarr.Array)
            if not _same_checksum(level0, checksum):
                check.corrupt.append(rel)
    if repair:
        check.removed = collect_garbage(location, catalog, min_age_seconds=min_age_seconds)
    return check
