"""``voxelhub cohort import``: a package into a de-identified project, checked first.

Every object's SHA-256 is checked against the manifest before anything is written (a
tampered or damaged package is refused with the object named).  A package that is not
de-identified, or holds a volume not marked de-identified, never enters a de-identified project.
Volumes are copied into the store under a temporary name and committed like an ingest's, then
catalogued with the source's rows, so voxels, geometry, checksums and labels are the source's;
feature rows go into the result store with their settings.  The provenance is kept in the
store (``projects/<p>/cohorts/<manifest sha256>.json``).  Importing the same package again
changes nothing: a volume already there with the same checksum is left alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from voxelhub.cohort.errors import IdentifiableData, ImportConflict, UnsupportedPackage
from voxelhub.cohort.package import MANIFEST, Package

FEATURES = "features/results.parquet"


@dataclass
class Imported:
    project: str
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    feature_rows: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        p = self.provenance
        return (
            f"project {self.project}: {len(self.written)} volume(s) imported, "
            f"{len(self.unchanged)} unchanged, {self.feature_rows} feature row(s); from site "
            f"{p.get('source_site')!r} (VoxelHub {p.get('voxelhub_version')}, exported "
            f"{p.get('exported_at')})"
        )


_UID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.\-]{0,63}$")
_HASH = re.compile(r"^[0-9a-f]{8,128}$")
_REQUIRED = {
    "patient": {"patient_key"},
    "study": {"study_uid"},
    "volume": {"volume_uid", "series_uid", "modality", "slices", "rows", "columns", "dtype",
               "spacing_z", "spacing_y", "spacing_x", "checksum", "content_key", "n_instances"},
}  # fmt: skip


@dataclass(frozen=True)
class PackagedVolume:
    """One volume of a manifest, checked: a safe UID, its own path, known catalog columns."""

    uid: str
    path: str
    patient: dict[str, Any]
    study: dict[str, Any]
    volume: dict[str, Any]


def _checked(entry: Any) -> PackagedVolume:
    from voxelhub.catalog import Patient, Study, Volume

    uid = entry.get("volume_uid") if isinstance(entry, dict) else None
    if not isinstance(uid, str) or not _UID.match(uid):
        raise UnsupportedPackage(f"a volume entry of the manifest has no valid UID: {uid!r}")
    path = f"volumes/{uid}.ome.zarr"
    if entry.get("path") != path:
        raise UnsupportedPackage(
            f"volume {uid}: its path must be {path}, not {entry.get('path')!r}"
        )
    tables = {"patient": Patient, "study": Study, "volume": Volume}
    rows = {}
    for part, table in tables.items():
        row = entry.get(part)
        columns = {c.name for c in table.__table__.columns} - {"id", "study_id", "project_id"}
        if not isinstance(row, dict) or not _REQUIRED[part] <= set(row) <= columns - {
            "patient_id", "store_path", "ingested_at"
        }:  # fmt: skip
            raise UnsupportedPackage(
                f"volume {uid}: its {part} row is not a VoxelHub catalog row (needs "
                f"{sorted(_REQUIRED[part])}, knows {sorted(columns)})"
            )
        rows[part] = row
    if rows["volume"]["volume_uid"] != uid:
        raise UnsupportedPackage(f"volume {uid}: its catalog row names another volume")
    return PackagedVolume(uid, path, rows["patient"], rows["study"], rows["volume"])


def _volume_is_deidentified(package: Package, rel: str) -> bool:
    """The volume's own OME-Zarr attributes say it was de-identified at ingest."""
    with package.fs.open(package.path(f"{rel}/zarr.json"), "rb") as f:
        attrs = json.loads(f.read()).get("attributes", {})
    found = _find_key(attrs, "deidentified")
    return found is True


def _find_key(tree: Any, key: str) -> Any:
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


def import_cohort(
    package_url: str,
    store: str | os.PathLike[str],
    *,
    project: str,
    catalog_url: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Imported:
    """Import the package at ``package_url`` into ``project`` (created de-identified).

    When ``store`` is the data service's URL (on the hub), the service imports it
    (:mod:`voxelhub.cohort.service_import`: curators only, verified and audited there).
    """
    service = _service_catalog(store)
    if service is not None:
        from voxelhub.cohort.service_import import import_through_service

        return import_through_service(
            service, package_url, project=project, storage_options=storage_options
        )
    from voxelhub.catalog import Catalog
    from voxelhub.features.results import ResultStore
    from voxelhub.ingest import _PROJECT_NAME
    from voxelhub.store.location import open_location

    if not _PROJECT_NAME.match(project):
        raise ImportConflict(f"invalid project name {project!r}")
    package = Package.at(package_url, storage_options)
    manifest = package.read_manifest()
    package.verify(manifest)
    if manifest.get("deidentified") is not True:
        raise IdentifiableData(
            f"the package at {package_url} is not de-identified: refused for project {project!r}"
        )
    entries = [_checked(entry) for entry in manifest.get("volumes") or []]
    for entry in entries:
        if not _volume_is_deidentified(package, entry.path):
            raise IdentifiableData(
                f"volume {entry.uid} ({entry.path}) is not marked de-identified: "
                f"the package is refused for project {project!r}"
            )
    features = manifest.get("features") or {}
    for settings_hash in features.get("settings") or []:
        if not isinstance(settings_hash, str) or not _HASH.match(settings_hash):
            raise UnsupportedPackage(f"not a settings hash in the manifest: {settings_hash!r}")
    feature_sets = _features(package, features)
    body = package.fs.cat_file(package.path(MANIFEST))
    cohort_id = hashlib.sha256(body).hexdigest()
    location = open_location(store)
    location.ensure_root()
    catalog = Catalog(location, catalog_url)
    result = Imported(project, provenance=dict(manifest.get("provenance", {})))
    try:
        existing_project = catalog.projects(projects=[project])
        if not existing_project.empty and not bool(existing_project.iloc[0]["deidentify"]):
            raise IdentifiableData(
                f"project {project!r} is not de-identified: a cohort goes into a de-identified "
                "project"
            )
        # every conflict is found before anything is written
        todo = []
        for entry in entries:
            existing = catalog.find_volume(entry.uid)
            if existing is None:
                todo.append(entry)
                continue
            held_by = catalog.volume_row(entry.uid)["project"]
            if held_by != project:
                raise ImportConflict(
                    f"volume {entry.uid} is already in project {held_by!r} of this store (a "
                    "volume UID is in one project only): the package is not imported"
                )
            if existing.checksum == entry.volume["checksum"] and location.exists(
                existing.store_path
            ):
                result.unchanged.append(entry.uid)
            else:
                raise ImportConflict(
                    f"volume {entry.uid} is already in the store with other content: the "
                    "package is not imported"
                )
        proj = catalog.ensure_project(project, deidentify=True)
        location.ensure_private_dir(f"projects/{project}")
        for entry in todo:
            tmp = location.new_temporary()
            for rel in sorted(manifest["objects"]):
                if rel.startswith(entry.path + "/"):
                    dst = posixpath.join(tmp, posixpath.relpath(rel, entry.path))
                    _put(location, dst, package.fs.cat_file(package.path(rel)))
            final = f"projects/{project}/{entry.uid}/{uuid.uuid4().hex[:16]}.ome.zarr"
            location.commit(tmp, final)
            catalog.record_volume(
                proj,
                patient=entry.patient,
                study=entry.study,
                volume={**entry.volume, "store_path": final},
            )
            result.written.append(entry.uid)
        results = ResultStore(catalog)
        for settings, rows in feature_sets:
            results.save(rows, settings)
            result.feature_rows += len(rows)
        record = {
            "cohort": cohort_id,
            "provenance": result.provenance,
            "volumes": [e.uid for e in entries],
            "deidentification": manifest.get("deidentification"),
        }
        _put(
            location,
            f"projects/{project}/cohorts/{cohort_id}.json",
            json.dumps(record, indent=1).encode(),
        )
        return result
    finally:
        catalog.close()


def _service_catalog(store: object) -> Any:
    """The data service's catalog when ``store`` is its URL (on the hub), else None."""
    from voxelhub.store.location import ServiceLocation, open_location

    if isinstance(store, str | os.PathLike):
        if os.fspath(store).split("://", 1)[0] not in ("http", "https"):
            return None
        store = open_location(store)
    if not isinstance(store, ServiceLocation):
        return None
    from voxelhub.service_catalog import ServiceCatalog

    return ServiceCatalog(store)


def _features(package: Package, features: dict[str, Any]) -> list[tuple[Any, Any]]:
    """The package's feature rows by settings, read and checked before anything is written."""
    from voxelhub.features.settings import Settings

    if not features.get("rows"):
        return []
    import pandas as pd

    table = pd.read_parquet(io.BytesIO(package.fs.cat_file(package.path(FEATURES))))
    sets = []
    for settings_hash, rows in table.groupby("settings_hash"):
        name = str(settings_hash)
        if name not in features["settings"]:
            raise UnsupportedPackage(f"{FEATURES} has rows with unlisted settings {name!r}")
        text = package.fs.cat_file(package.path(f"features/settings/{name}.json"))
        sets.append((Settings.from_json(text.decode()), rows))
    return sets


def _put(location: Any, rel: str, data: bytes) -> None:
    path = location.full_path(rel)
    parent = posixpath.dirname(path)
    location.fs.makedirs(parent, exist_ok=True)
    location.fs.pipe_file(path, data)
