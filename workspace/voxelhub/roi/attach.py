"""SEG and RTSTRUCT objects found by ingest, attached as label images to the series they reference.

Ingest hands over every :class:`~voxelhub.dicom.roi_objects.RoiObject` the index found.  For
each one, the volumes of the series it references are looked up in the catalog (this ingest's
and earlier ones', in the same project); when the series was split into several volumes, the
ones holding the instances it references are chosen.  The object is then imported with
:func:`~voxelhub.roi.imports.import_seg` or :func:`~voxelhub.roi.imports.import_rtstruct` and
stored next to each volume:

* a SEG as ``seg-<ref>`` (one label image, value = segment number), or ``seg-<ref>-<segment>``
  per segment when its segments overlap;
* an RTSTRUCT as ``rtstruct-<ref>-<roi>``, one mask per ROI;

where ``<ref>`` is 8 hex digits of a hash of the object's (output) SOP Instance UID, so that
ingesting it again replaces the same label images.  Every object gets one entry in the report
(``attached``; ``pending``; or ``failed`` with the reason, which also lists the file among the
refused ones).

An object whose series is not in the store yet is kept in the store, pending, under
``projects/<project>/pending-labels/<ref>/`` (its DICOM bytes in a zarr array, de-identified
first in a de-identified project, with the series it references); every later ingest into the
project attaches the pending objects whose series has arrived, and removes them.

In a de-identified project the series and instance UIDs are compared after the project's UID
mapping, the frame-of-reference and patient check is skipped (the stored volume carries replaced
values; the series reference is the link), and no path is stored with the label image.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from voxelhub.catalog import Catalog
from voxelhub.dicom.index import ZIP_SEP, open_source
from voxelhub.dicom.roi_objects import RoiObject, pending_root
from voxelhub.errors import VoxelHubError
from voxelhub.roi.imports import import_rtstruct, import_seg
from voxelhub.store.stored import StoredVolume, read_attributes

__all__ = ["attach_rois", "keep_pending", "label_name", "pending_objects"]


def label_name(obj: RoiObject, out_uid: Callable[[str], str]) -> str:
    """``seg-<ref>`` or ``rtstruct-<ref>``: stable for one object, whatever its file is called."""
    ref = hashlib.sha256(out_uid(obj.sop_instance_uid).encode()).hexdigest()[:8]
    return f"{obj.kind.lower()}-{ref}"


@contextmanager
def _local_file(source: str, location: Any) -> Iterator[str]:
    """A path pydicom can open: the file itself, or a zip member copied to a temporary file."""
    if ZIP_SEP not in source and not source.startswith(PENDING):
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="voxelhub-roi-") as folder:
        path = os.path.join(folder, "object.dcm")
        with _open(source, location) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        yield path


PENDING = "pending:"
"""Source prefix of an object kept pending in the store (``pending:<store path>``)."""


def _open(source: str, location: Any) -> Any:
    if source.startswith(PENDING):
        group = location.open_group(source[len(PENDING) :])
        return io.BytesIO(np.asarray(group["bytes"][:], dtype=np.uint8).tobytes())
    return open_source(source)


def keep_pending(
    catalog: Catalog, project: str, obj: RoiObject, deid: Any, out_uid: Callable[[str], str]
) -> str:
    """Keep an object whose series is not stored yet in the store, de-identified if need be."""
    import pydicom
    import zarr

    location = catalog.location
    root = pending_root(project)
    final = posixpath.join(root, label_name(obj, out_uid))
    if location.exists(final):
        return final
    with open_source(obj.source) as f:
        data = f.read()
    if deid is not None:
        ds = pydicom.dcmread(io.BytesIO(data))
        deid.deidentify(ds)
        buffer = io.BytesIO()
        ds.save_as(buffer)
        data = buffer.getvalue()
    zarr.open_group(location.zarr_store(root), mode="a", zarr_format=3)
    tmp = location.new_temporary(suffix="")
    try:
        store = location.zarr_store(tmp)
        group = zarr.open_group(store, mode="w-", zarr_format=3)
        codec = _encryption(catalog, project)  # an encrypted project's object: sealed too
        extra: dict[str, Any] = {} if codec is None else {"compressors": [codec]}
        array = group.create_array("bytes", shape=(len(data),), dtype="uint8", **extra)
        array[:] = np.frombuffer(data, dtype=np.uint8)
        attrs: dict[str, Any] = {
            "kind": obj.kind,
            "sop_instance_uid": out_uid(obj.sop_instance_uid),
            "referenced_series": [out_uid(u) for u in obj.referenced_series],
            "referenced_instances": [out_uid(u) for u in obj.referenced_instances],
        }
        if codec is not None:
            attrs = _sealed(store, attrs, codec.key_id)
        group.attrs["voxelhub"] = attrs
        location.commit(tmp, final)
    except BaseException:
        location.remove(tmp)
        raise
    return final


def _encryption(catalog: Catalog, project: str) -> Any:
    """The chunk codec of an encrypted project (None for a clear one)."""
    rows = catalog.projects(projects=[project])
    if rows.empty or not bool(rows.encrypted.iloc[0]):
        return None
    from voxelhub.store.encryption import codec_for

    return codec_for(project)


def _sealed(store: Any, attrs: dict[str, Any], key_id: str) -> dict[str, Any]:
    """Keep only ``kind`` clear; the UIDs go into the group's sealed attributes object."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    from voxelhub.store import sidecar

    clear, sealed = sidecar.split(attrs, key_id)
    clear["kind"] = attrs["kind"]
    sync(store.set(sidecar.SIDECAR_KEY, default_buffer_prototype().buffer.from_bytes(sealed)))
    return clear


def pending_objects(catalog: Catalog, project: str) -> list[RoiObject]:
    """The objects kept pending in a project (their UIDs as the store records them)."""
    import zarr

    location = catalog.location
    root = pending_root(project)
    if not location.exists(posixpath.join(root, "zarr.json")):
        return []
    group = zarr.open_group(location.zarr_store(root, read_only=True), mode="r")
    out = []
    for name in sorted(group.group_keys()):
        meta: dict[str, Any] = dict(group[name].attrs.get("voxelhub") or {})  # type: ignore[arg-type]
        meta = read_attributes(location, posixpath.join(root, name), meta)  # encrypted: sealed
        out.append(
            RoiObject(
                source=PENDING + posixpath.join(root, name),
                kind=str(meta.get("kind", "")),
                sop_instance_uid=str(meta.get("sop_instance_uid", "")),
                series_instance_uid="",
                referenced_series=tuple(str(u) for u in meta.get("referenced_series", [])),
                referenced_instances=tuple(str(u) for u in meta.get("referenced_instances", [])),
                patient_id="",
            )
        )
    return out


def _targets(
    catalog: Catalog, project: str, obj: RoiObject, out_uid: Callable[[str], str]
) -> list[StoredVolume]:
    """The stored volumes the object belongs to (empty: its series is not stored)."""
    wanted = {out_uid(u) for u in obj.referenced_series}
    rows = catalog.series(project=project)
    if rows.empty or not wanted:
        return []
    found = [catalog.stored_volume(row) for _, row in rows[rows.series_uid.isin(wanted)].iterrows()]
    if len(found) <= 1 or not obj.referenced_instances:
        return found
    instances = {out_uid(u) for u in obj.referenced_instances}
    holding = [v for v in found if instances & set(v.source_instance_uids)]
    return holding or found


def attach_rois(
    catalog: Catalog,
    project: str,
    objects: list[RoiObject],
    *,
    out_uid: Callable[[str], str] = lambda uid: uid,
    deid: Any = None,
    name_of: Callable[[str], str] = lambda source: source,
    reason_of: Callable[[str, str], str] = lambda text, source: text,
) -> list[dict[str, Any]]:
    """Import every ROI object onto the volumes of the series it references; one entry each.

    Objects kept pending by earlier ingests are tried too: attached ones (or ones that fail)
    leave the pending area and get an entry; those still waiting stay, silently.

    ``out_uid`` maps a UID as the store records it (the project's de-identification, ``deid``);
    ``name_of`` / ``reason_of`` name a source and scrub a message for the report (paths are
    withheld in de-identified projects).
    """
    location = catalog.location
    entries: list[dict[str, Any]] = []
    fresh = [(obj, out_uid) for obj in objects]
    kept = [(obj, _same) for obj in pending_objects(catalog, project)]
    for obj, mapping in fresh + kept:
        is_pending = obj.source.startswith(PENDING)
        entry: dict[str, Any] = {
            "kind": obj.kind,
            "sop_instance_uid": mapping(obj.sop_instance_uid),
            "source": obj.source if is_pending else name_of(obj.source),
            "series_uid": ", ".join(mapping(u) for u in obj.referenced_series),
        }
        targets = _targets(catalog, project, obj, mapping)
        if not targets:
            if is_pending:
                continue  # still waiting for its series
            if obj.referenced_series:
                keep_pending(catalog, project, obj, deid, mapping)
                reason = (
                    "the series it references is not in the store yet: kept, pending, and "
                    "attached by the ingest that brings the series"
                )
            else:
                reason = "it names no referenced series"
            entry.update(status="pending", reason=reason)
            entries.append(entry)
            continue
        base = label_name(obj, mapping)
        stored: dict[str, list[str]] = {}
        problems: list[str] = []
        with _local_file(obj.source, location) as path:
            for target in targets:
                options: dict[str, Any] = {
                    "name": base,
                    "check_reference": deid is None,
                    "source_name": entry["source"] if deid is not None or is_pending else None,
                    "overwrite": True,
                }
                try:
                    if obj.kind == "SEG":
                        got = import_seg(catalog, target, path, **options)
                    else:
                        got = import_rtstruct(catalog, target, path, **options)
                except (VoxelHubError, KeyError, ValueError) as exc:
                    problems.append(f"{target.volume_uid}: {reason_of(str(exc), obj.source)}")
                    continue
                stored[target.volume_uid] = [
                    g.stored.name for g in got.values() if g.stored is not None
                ]
        if stored:
            entry.update(status="attached", labels=stored)
            if problems:
                entry["reason"] = "; ".join(problems)
        else:
            entry.update(status="failed", reason="; ".join(problems))
        # attached or refused for good: nothing left to wait for
        location.remove(posixpath.join(pending_root(project), base))
        entries.append(entry)
    return entries


def _same(uid: str) -> str:
    return uid
