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
import uuid
from dataclasses import dataclass, field
from typing import Any

from voxelhub.cohort.errors import IdentifiableData, ImportConflict
from voxelhub.cohort.package import MANIFEST, Package


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
    """Import the package at ``package_url`` into ``project`` (created de-identified)."""
    from voxelhub.catalog import Catalog
    from voxelhub.features.results import ResultStore
    from voxelhub.features.settings import Settings
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
    for entry in manifest["volumes"]:
        if not _volume_is_deidentified(package, entry["path"]):
            raise IdentifiableData(
                f"volume {entry['volume_uid']} ({entry['path']}) is not marked de-identified: "
                f"the package is refused for project {project!r}"
            )
    body = package.fs.cat_file(package.path(MANIFEST))
    cohort_id = hashlib.sha256(body).hexdigest()
    location = open_location(store)
    location.ensure_root()
    catalog = Catalog(location, catalog_url)
    result = Imported(project, provenance=dict(manifest.get("provenance", {})))
    try:
        proj = catalog.ensure_project(project, deidentify=True)
        if not proj.deidentify:
            raise IdentifiableData(f"project {project!r} is not de-identified")  # never reached
        location.ensure_private_dir(f"projects/{project}")
        for entry in manifest["volumes"]:
            uid = entry["volume_uid"]
            existing = catalog.find_volume(uid)
            if existing is not None:
                if existing.checksum == entry["volume"]["checksum"] and location.exists(
                    existing.store_path
                ):
                    result.unchanged.append(uid)
                    continue
                raise ImportConflict(
                    f"volume {uid} is already in the store with other content: not replaced"
                )
            tmp = location.new_temporary()
            for rel in sorted(manifest["objects"]):
                if rel.startswith(entry["path"] + "/"):
                    dst = posixpath.join(tmp, posixpath.relpath(rel, entry["path"]))
                    _put(location, dst, package.fs.cat_file(package.path(rel)))
            final = f"projects/{project}/{uid}/{uuid.uuid4().hex[:16]}.ome.zarr"
            location.commit(tmp, final)
            catalog.record_volume(
                proj,
                patient=entry["patient"],
                study=entry["study"],
                volume={**entry["volume"], "store_path": final},
            )
            result.written.append(uid)
        features = manifest.get("features") or {}
        if features.get("rows"):
            import pandas as pd

            table = pd.read_parquet(
                io.BytesIO(package.fs.cat_file(package.path("features/results.parquet")))
            )
            results = ResultStore(catalog)
            for settings_hash, rows in table.groupby("settings_hash"):
                text = package.fs.cat_file(package.path(f"features/settings/{settings_hash}.json"))
                settings = Settings.from_json(text.decode())
                results.save(rows, settings)
            result.feature_rows = len(table)
        record = {"cohort": cohort_id, "provenance": result.provenance, "volumes": [
            e["volume_uid"] for e in manifest["volumes"]
        ], "deidentification": manifest.get("deidentification")}  # fmt: skip
        _put(
            location,
            f"projects/{project}/cohorts/{cohort_id}.json",
            json.dumps(record, indent=1).encode(),
        )
        return result
    finally:
        catalog.close()


def _put(location: Any, rel: str, data: bytes) -> None:
    path = location.full_path(rel)
    parent = posixpath.dirname(path)
    location.fs.makedirs(parent, exist_ok=True)
    location.fs.pipe_file(path, data)
