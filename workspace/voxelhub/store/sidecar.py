"""A volume's private attributes, sealed beside its ``zarr.json`` in an encrypted project.

``zarr.json`` is clear text whatever codec the chunks use.  In an encrypted project it keeps
only what describes the grid (levels, geometry, dtype, checksum) and the volume's random id;
everything that can carry PHI — the de-identified DICOM header, descriptions, source instance
UIDs, study and patient ids, the acquisition table — goes into :data:`SIDECAR_KEY`, sealed with
the project's data key.  Readers holding the key (:meth:`StoredVolume.from_store`, the data
service) merge it back, so nobody else sees a difference.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

SIDECAR_KEY = "voxelhub-attributes.sealed"
"""Object in a volume's group holding its sealed private attributes."""

CLEAR_KEYS = frozenset(
    {"format_version", "volume_uid", "geometry", "dtype", "dtype_reason", "checksum", "levels"}
)
"""``voxelhub`` attributes that stay in ``zarr.json`` of an encrypted volume: none can name
anyone (the volume uid is a hash of the project and the output series UID)."""

MARKER = "encryption"
"""Clear attribute saying which data key seals the volume and where its private attributes are."""


def split(
    attrs: Mapping[str, Any], key_id: str, *, clear_keys: frozenset[str] = CLEAR_KEYS
) -> tuple[dict[str, Any], bytes]:
    """``(clear attributes with the marker, sealed private attributes)``: only ``clear_keys``
    stay clear (a volume's by default; label images pass their own)."""
    from voxelhub.store.encryption import seal

    clear = {k: v for k, v in attrs.items() if k in clear_keys}
    private = {k: v for k, v in attrs.items() if k not in clear_keys}
    clear[MARKER] = {"key_id": key_id, "attributes": SIDECAR_KEY}
    return clear, seal(key_id, json.dumps(private).encode())


def is_sealed(meta: Mapping[str, Any]) -> bool:
    """Whether ``meta`` (a volume's ``voxelhub`` attributes) still lacks its sealed part."""
    marker = meta.get(MARKER)
    return isinstance(marker, Mapping) and bool(marker.get("attributes"))


def merged(meta: Mapping[str, Any], read: Callable[[str], bytes | None]) -> dict[str, Any]:
    """``meta`` with its sealed attributes merged back (``read(key)`` gives an object of the
    volume's group); unchanged when nothing is sealed.  The marker then keeps the key id only."""
    out = dict(meta)
    if not is_sealed(meta):
        return out
    from voxelhub.errors import StoreError
    from voxelhub.store.encryption import unseal

    marker = dict(out[MARKER])
    blob = read(str(marker.pop("attributes")))
    if blob is None:
        raise StoreError(
            f"the encrypted attributes of this volume (data key {marker.get('key_id')}) are "
            f"missing: the store was changed outside VoxelHub"
        )
    private = json.loads(unseal(blob))
    out.update(private)
    out[MARKER] = marker
    return out
