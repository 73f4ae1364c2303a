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
(``attached``, ``pending``: its series is not in the store yet, ingest the object again once it
is; or ``failed`` with the reason, which also lists the file among the refused ones).

In a de-identified project the series and instance UIDs are compared after the project's UID
mapping, the frame-of-reference and patient check is skipped (the stored volume carries replaced
values; the series reference is the link), and no path is stored with the label image.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from voxelhub.catalog import Catalog
from voxelhub.dicom.index import ZIP_SEP, open_source
from voxelhub.dicom.roi_objects import RoiObject
from voxelhub.errors import VoxelHubError
from voxelhub.roi.imports import import_rtstruct, import_seg
from voxelhub.roi.labels import volume_path

__all__ = ["attach_rois", "label_name"]


def label_name(obj: RoiObject, out_uid: Callable[[str], str]) -> str:
    """``seg-<ref>`` or ``rtstruct-<ref>``: stable for one object, whatever its file is called."""
    ref = hashlib.sha256(out_uid(obj.sop_instance_uid).encode()).hexdigest()[:8]
    return f"{obj.kind.lower()}-{ref}"


@contextmanager
def _local_file(source: str) -> Iterator[str]:
    """A path pydicom can open: the file itself, or a zip member copied to a temporary file."""
    if ZIP_SEP not in source:
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="voxelhub-roi-") as folder:
        path = os.path.join(folder, "object.dcm")
        with open_source(source) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        yield path


def _targets(
    catalog: Catalog, project: str, obj: RoiObject, out_uid: Callable[[str], str]
) -> list[dict[str, Any]]:
    """Catalog rows of the volumes the object belongs to (empty: its series is not stored)."""
    wanted = {out_uid(u) for u in obj.referenced_series}
    rows = catalog.series(project=project)
    if rows.empty or not wanted:
        return []
    records: list[dict[str, Any]] = [
        {str(k): v for k, v in r.items()} for r in rows.to_dict("records")
    ]
    found = [r for r in records if str(r["series_uid"]) in wanted]
    if len(found) <= 1 or not obj.referenced_instances:
        return found
    instances = {out_uid(u) for u in obj.referenced_instances}
    holding = []
    for row in found:
        group = catalog.location.open_group(volume_path(catalog, row))
        meta: dict[str, Any] = dict(group.attrs.get("voxelhub") or {})  # type: ignore[arg-type]
        if instances & {str(u) for u in meta.get("source_instance_uids", [])}:
            holding.append(row)
    return holding or found


def attach_rois(
    catalog: Catalog,
    project: str,
    objects: list[RoiObject],
    *,
    out_uid: Callable[[str], str] = lambda uid: uid,
    deidentified: bool = False,
    name_of: Callable[[str], str] = lambda source: source,
    reason_of: Callable[[str, str], str] = lambda text, source: text,
) -> list[dict[str, Any]]:
    """Import every ROI object onto the volumes of the series it references; one entry each.

    ``out_uid`` maps a UID as the store records it (the project's de-identification);
    ``name_of`` / ``reason_of`` name a source and scrub a message for the report (paths are
    withheld in de-identified projects).
    """
    entries: list[dict[str, Any]] = []
    for obj in objects:
        entry: dict[str, Any] = {
            "kind": obj.kind,
            "sop_instance_uid": out_uid(obj.sop_instance_uid),
            "source": name_of(obj.source),
            "series_uid": ", ".join(out_uid(u) for u in obj.referenced_series),
        }
        targets = _targets(catalog, project, obj, out_uid)
        if not targets:
            entry.update(
                status="pending",
                reason=(
                    "the series it references is not in the store: ingest this file again "
                    "once its series is"
                    if obj.referenced_series
                    else "it names no referenced series"
                ),
            )
            entries.append(entry)
            continue
        base = label_name(obj, out_uid)
        stored: dict[str, list[str]] = {}
        problems: list[str] = []
        with _local_file(obj.source) as path:
            for row in targets:
                options: dict[str, Any] = {
                    "name": base,
                    "check_reference": not deidentified,
                    "source_name": name_of(obj.source) if deidentified else None,
                    "overwrite": True,
                }
                try:
                    if obj.kind == "SEG":
                        got = import_seg(catalog, row, path, **options)
                    else:
                        got = import_rtstruct(catalog, row, path, **options)
                except (VoxelHubError, KeyError, ValueError) as exc:
                    problems.append(f"{row['volume_uid']}: {reason_of(str(exc), obj.source)}")
                    continue
                stored[str(row["volume_uid"])] = [
                    g.stored.name for g in got.values() if g.stored is not None
                ]
        if stored:
            entry.update(status="attached", labels=stored)
            if problems:
                entry["reason"] = "; ".join(problems)
        else:
            entry.update(status="failed", reason="; ".join(problems))
        entries.append(entry)
    return entries
