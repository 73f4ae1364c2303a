"""Re-encryption of a project after a data-key rotation, while readers keep reading.

:meth:`KeyRing.rotate <voxelhub.store.keys.KeyRing.rotate>` only makes a new current data key;
what was written before stays sealed with the old one.  :func:`reencrypt_project` rewrites each
volume tree (every level, every label image, every sealed attributes object) under the new key
into a temporary tree, commits it at a **new** version path and switches the catalog row to it
in one transaction: the same commit protocol as a re-ingest.  So

- a reader opening a volume meets either the old tree (old key, still in the ring) or the new
  one, each complete; one that opened the old tree just before the switch keeps reading it,
  because old trees are removed only ``linger_seconds`` after the last switch;
- a crash leaves every volume fully old-key or fully new-key (a tree is one key: see
  :func:`tree_key_ids`); running again skips what is done, removes this job's temporaries and
  the old trees it switched away from, and finishes.

An encrypted identifiable project's sealed catalog columns are sealed again under the new key,
with the patient ID's blind index (:meth:`Catalog.reseal <voxelhub.catalog.Catalog.reseal>`).
Then :func:`retire_old_keys` removes the old key versions from the ring, refused (naming the
paths, or the catalog) while anything of the project still uses one.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import posixpath
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from voxelhub.errors import StoreError
from voxelhub.store.encryption import CODEC_NAME, SEALED_MAGIC, seal, unseal
from voxelhub.store.keys import KeyRing
from voxelhub.store.location import TMP_DIR, Location

if TYPE_CHECKING:
    from voxelhub.catalog import Catalog

LINGER_SECONDS = 30.0
"""How long a switched-away old tree stays for readers that opened it just before the switch."""


class KeyInUse(StoreError):
    """A data key version cannot be retired: something in the store is still sealed with it."""


class ReencryptionBusy(StoreError):
    """Another re-encryption of the same project runs now."""


class Outcome(enum.Enum):
    """What happened to one volume."""

    REWRITTEN = "rewritten"
    ALREADY_CURRENT = "already current"
    CHANGED_MEANWHILE = "changed meanwhile"
    """Its catalog row moved (a re-ingest) during the rewrite: the new ingest's tree stands."""


@dataclass(frozen=True)
class Step:
    """Progress of a run: volume ``done`` of ``total`` has just ended with ``outcome``."""

    volume_uid: str
    outcome: Outcome
    done: int
    total: int


@dataclass
class Reencryption:
    """What a run did; ``key_id`` is the data key every volume of the project now uses."""

    key_id: str
    steps: list[Step] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    resealed_rows: int = 0
    """catalog rows whose identifying columns were sealed again under ``key_id``"""

    def count(self, outcome: Outcome) -> int:
        return sum(step.outcome is outcome for step in self.steps)


def tree_key_ids(location: Location, rel: str) -> set[str]:
    """Ids of every data key the tree at ``rel`` uses: array codecs, markers, sealed objects."""
    store = location.zarr_store(rel, read_only=True)
    found: set[str] = set()
    for key in sync(_keys(store)):
        if key == "zarr.json" or key.endswith("/zarr.json"):
            _collect_key_ids(json.loads(_get(store, key)), found)
        elif posixpath.basename(key).endswith(".sealed"):
            found.add(_sealed_key_id(_get(store, key)))
    return found


def reencrypt_project(
    catalog: Catalog,
    project: str,
    ring: KeyRing,
    *,
    progress: Callable[[Step], None] | None = None,
    linger_seconds: float = LINGER_SECONDS,
) -> Reencryption:
    """Rewrite every volume of ``project`` still sealed with an older data key under its
    current one, one volume at a time, with no downtime for readers (module docstring).

    The caller's process must use ``ring`` (:func:`~voxelhub.store.encryption.use_keys`)."""
    location = catalog.location
    current = ring.current(project)
    result = Reencryption(current)
    with _exclusive(ring, project):
        tag = _job_tag(project)
        for name in _own_temporaries(location, tag):
            location.remove(posixpath.join(TMP_DIR, name))
        # the catalog's sealed columns and blind index (an encrypted identifiable project)
        # first: a catalog from before sealed columns lists nothing until they are sealed
        result.resealed_rows = catalog.reseal(project)
        result.removed += _remove_orphans(catalog, project, current)
        rows = catalog.series(project=project)
        total = len(rows)
        switched: list[str] = []
        for done, (uid, rel) in enumerate(
            zip(rows.volume_uid, rows.store_path, strict=True), start=1
        ):
            outcome = _reencrypt_volume(catalog, str(uid), str(rel), current, tag, switched)
            step = Step(str(uid), outcome, done, total)
            result.steps.append(step)
            if progress is not None:
                progress(step)
        if switched:
            time.sleep(linger_seconds)
            for rel in switched:
                location.remove(rel)
            result.removed += switched
    return result


def retire_old_keys(catalog: Catalog, project: str, ring: KeyRing) -> list[str]:
    """Remove every non-current data key version of ``project`` from the ring; return their ids.

    :class:`KeyInUse` (nothing retired) while any tree under the project's folder — listed
    volumes, unlisted leftovers, superseded versions, pending label objects — still uses one."""
    location = catalog.location
    current = ring.current(project)
    old = set(ring.versions(project)) - {current}
    if not old:
        return []
    root = f"projects/{project}"
    used = (
        {}
        if not location.exists(root)
        else {
            rel: ids & old
            for rel in _trees_under(location, root)
            if (ids := tree_key_ids(location, rel)) & old
        }
    )
    if in_catalog := catalog.sealed_key_ids(project) & old:
        used["the catalog's sealed columns"] = in_catalog
    if used:
        listing = "; ".join(
            f"{rel} ({', '.join(sorted(ids))})" for rel, ids in sorted(used.items())
        )
        raise KeyInUse(
            f"data key version(s) of project {project!r} still in use, not retired: {listing}. "
            f"Run `voxelhub keys rotate --reencrypt` (or attach/remove pending label objects) "
            f"first"
        )
    for key_id in sorted(old):
        ring.retire_data_key(project, key_id)
    return sorted(old)


# -- one volume ----------------------------------------------------------------------------------


def _reencrypt_volume(
    catalog: Catalog, uid: str, rel: str, current: str, tag: str, switched: list[str]
) -> Outcome:
    location = catalog.location
    if tree_key_ids(location, rel) <= {current}:
        return Outcome.ALREADY_CURRENT
    tmp = location.new_temporary(suffix=f".{tag}.ome.zarr")
    new_rel = f"{posixpath.dirname(rel)}/{uuid.uuid4().hex[:16]}.ome.zarr"
    try:
        rewrite_tree(location, rel, tmp, current)
        location.commit(tmp, new_rel)
    except BaseException:
        location.remove(tmp)
        raise
    if not _switch_row(catalog, uid, rel, new_rel):
        location.remove(new_rel)
        return Outcome.CHANGED_MEANWHILE
    switched.append(rel)
    return Outcome.REWRITTEN


def rewrite_tree(location: Location, src_rel: str, dst_rel: str, key_id: str) -> None:
    """Copy the tree ``src_rel`` to ``dst_rel`` with everything sealed under data key ``key_id``:
    arrays are decoded and written again block by block (one shard in memory) and each block is
    read back and compared; sealed objects are opened and sealed again; the rest is copied."""
    src = location.zarr_store(src_rel, read_only=True)
    dst = location.zarr_store(dst_rel)
    keys = sorted(sync(_keys(src)))
    metas = {k: json.loads(_get(src, k)) for k in keys if posixpath.basename(k) == "zarr.json"}
    arrays = [posixpath.dirname(k) for k, m in metas.items() if m.get("node_type") == "array"]
    prototype = default_buffer_prototype()

    def inside_array(key: str) -> bool:
        return any(key.startswith(a + "/") if a else True for a in arrays)

    for key in keys:
        if key in metas:
            blob = json.dumps(_rekeyed(metas[key], key_id), indent=2).encode()
        elif inside_array(key):
            continue  # chunks: written below, through the codec
        else:
            blob = _get(src, key)
            if blob.startswith(SEALED_MAGIC):
                blob = seal(key_id, unseal(blob))
        sync(dst.set(key, prototype.buffer.from_bytes(blob)))
    for path in arrays:
        _copy_array(
            zarr.open_array(src, path=path, mode="r"), zarr.open_array(dst, path=path, mode="r+")
        )


def _copy_array(src: zarr.Array, dst: zarr.Array) -> None:
    step = src.shards or src.chunks
    grid = [range(0, n, s) for n, s in zip(src.shape, step, strict=True)]
    for corner in np.ndindex(*(len(g) for g in grid)):
        where = tuple(slice(g[i], g[i] + s) for g, i, s in zip(grid, corner, step, strict=True))
        block = np.asarray(src[where])
        dst[where] = block
        if not np.array_equal(np.asarray(dst[where]), block, equal_nan=block.dtype.kind == "f"):
            raise StoreError(f"re-encrypted block {where} of {dst.path} reads back differently")


def _rekeyed(meta: Any, key_id: str) -> Any:
    """``meta`` with every encryption codec and marker moved to ``key_id`` (fresh salts)."""
    salts: dict[str, str] = {}

    def walk(node: Any, parent_key: str = "") -> Any:
        if isinstance(node, dict):
            if node.get("name") == CODEC_NAME:
                old = str(node.get("configuration", {}).get("salt", ""))
                salt = salts.setdefault(old, os.urandom(16).hex())
                return {"name": CODEC_NAME, "configuration": {"key_id": key_id, "salt": salt}}
            out = {k: walk(v, k) for k, v in node.items()}
            if parent_key == "encryption" and "key_id" in out:
                out["key_id"] = key_id
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(meta)


def _collect_key_ids(node: Any, found: set[str], parent_key: str = "") -> None:
    if isinstance(node, dict):
        if node.get("name") == CODEC_NAME:
            found.add(str(node.get("configuration", {}).get("key_id", "")))
        elif parent_key == "encryption" and "key_id" in node:
            found.add(str(node["key_id"]))
        for k, v in node.items():
            _collect_key_ids(v, found, k)
    elif isinstance(node, list):
        for v in node:
            _collect_key_ids(v, found)


def _sealed_key_id(blob: bytes) -> str:
    if not blob.startswith(SEALED_MAGIC):
        raise StoreError("a .sealed object does not start as one: the store was changed")
    return blob[len(SEALED_MAGIC) :].split(b"\0", 1)[0].decode()


def _switch_row(catalog: Catalog, uid: str, old_rel: str, new_rel: str) -> bool:
    """Point the volume's row at ``new_rel`` if it still points at ``old_rel`` (one transaction)."""
    from sqlalchemy import update

    from voxelhub.catalog import Volume

    with catalog.session() as s:
        done = s.execute(
            update(Volume)
            .where(Volume.volume_uid == uid, Volume.store_path == old_rel)
            .values(store_path=new_rel)
        )
        return bool(getattr(done, "rowcount", 0) == 1)


# -- crash leftovers -------------------------------------------------------------------------


def _job_tag(project: str) -> str:
    """Suffix of this project's re-encryption temporaries (no project name in object names)."""
    return "reencrypt-" + hashlib.sha256(project.encode()).hexdigest()[:12]


def _own_temporaries(location: Location, tag: str) -> list[str]:
    names = [posixpath.basename(str(p).rstrip("/")) for p in location.list_temporary()]
    return [n for n in names if n.endswith(f".{tag}.ome.zarr")]


def _remove_orphans(catalog: Catalog, project: str, current: str) -> list[str]:
    """Unlisted version trees of the project still under an old key: the old trees an
    interrupted run had switched away from (a fresh ingest's trees use the current key)."""
    location = catalog.location
    listed = catalog.store_paths()
    removed = []
    for rel in location.list_volumes():
        if rel in listed or not rel.startswith(f"projects/{project}/"):
            continue
        ids = tree_key_ids(location, rel)
        if ids and current not in ids:
            location.remove(rel)
            removed.append(rel)
    return removed


def _trees_under(location: Location, root: str) -> list[str]:
    """Every node of ``root`` directly holding a ``voxelhub`` group or array (version trees,
    superseded ones, pending objects), found from their ``zarr.json`` files."""
    store = location.zarr_store(root, read_only=True)
    tops: list[str] = []
    metas = [k for k in sync(_keys(store)) if posixpath.basename(k) == "zarr.json"]
    for key in sorted(metas, key=lambda k: (k.count("/"), k)):  # a tree before its nodes
        parent = posixpath.dirname(key)
        if not any(parent == t or parent.startswith(t + "/") for t in tops):
            tops.append(parent)
    return [posixpath.join(root, t) if t else root for t in tops]


@contextmanager
def _exclusive(ring: KeyRing, project: str) -> Iterator[None]:
    try:
        with ring.lock(f".{_job_tag(project)}.lock", wait=False):
            yield
    except BlockingIOError:
        raise ReencryptionBusy(
            f"project {project!r} is being re-encrypted by another process; wait for it"
        ) from None


async def _collect(listing: AsyncIterator[str]) -> list[str]:
    return [key async for key in listing]


async def _keys(store: Any) -> list[str]:
    return await _collect(store.list())


def _get(store: Any, key: str) -> bytes:
    found = sync(store.get(key, prototype=default_buffer_prototype()))
    if found is None:
        raise StoreError(f"{key} vanished from the store while it was being re-encrypted")
    return bytes(found.to_bytes())
