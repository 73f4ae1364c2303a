"""``voxelhub cohort export``: a de-identified selection of a project, as a package.

Only a de-identified project may be exported (an identifiable one is refused, and so is any
volume in it not marked de-identified).  The volumes' OME-Zarr trees are copied as stored,
label images included, so geometry, voxels and checksums are the source's; their feature rows
and settings go along.  The manifest carries the de-identification profile and options, and
the provenance: the source site's pseudonym, the VoxelHub version and the date.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any

from voxelhub.cohort.errors import CohortError, IdentifiableData, IdentifiableProject
from voxelhub.cohort.package import FORMAT, MANIFEST, VERSION, Package

SITE_ENV = "VOXELHUB_SITE"
_SKIP_COLUMNS = {"id", "study_id", "patient_id", "project_id", "ingested_at", "store_path"}


@dataclass(frozen=True)
class Exported:
    target: str
    volumes: int
    objects: int
    manifest_sha256: str
    """Tell the receiving site this out of band: it proves the manifest is the one sent."""


def deidentification_used() -> dict[str, Any]:
    """What VoxelHub's ingest applies to a de-identified project (``voxelhub.dicom.deid``)."""
    from voxelhub.dicom.deid import PROFILE_NAME

    return {
        "profile": PROFILE_NAME,
        "options": ["Retain Longitudinal Modified Dates Option"],
        "pseudonyms": "VoxelHub keyed HMAC-SHA256 UIDs and pseudonyms (the key stays at the "
        "source site)",
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("voxelhub")
    except PackageNotFoundError:
        return "unknown"


def _columns(obj: Any) -> dict[str, Any]:
    return {
        c.name: getattr(obj, c.name) for c in obj.__table__.columns if c.name not in _SKIP_COLUMNS
    }


def _rows(catalog: Any, volume_uid: str) -> dict[str, Any]:
    from sqlalchemy import select

    from voxelhub.catalog import Volume

    with catalog.session() as s:
        volume = s.scalar(select(Volume).where(Volume.volume_uid == volume_uid))
        study = volume.study
        return {
            "patient": _columns(study.patient),
            "study": _columns(study),
            "volume": _columns(volume),
            "store_path": volume.store_path,
        }


def export_cohort(
    store: str | os.PathLike[str],
    target: str,
    *,
    project: str,
    modality: str | None = None,
    text: str | None = None,
    volumes: list[str] | None = None,
    site: str | None = None,
    catalog_url: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Exported:
    """Write the volumes of ``project`` selected by the catalog query to the package ``target``
    (a new folder, or an empty ``s3://`` prefix).

    When ``store`` is the data service's URL (on the hub), the service exports the selection
    (:mod:`voxelhub.cohort.service_export`: curators only, audited there) and the package is
    written to ``target`` here.
    """
    from voxelhub.cohort.importing import _service_catalog

    service = _service_catalog(store)
    if service is not None:
        from voxelhub.cohort.service_export import export_through_service

        return export_through_service(
            service, target, project=project, modality=modality, text=text, volumes=volumes,
            site=site or os.environ.get(SITE_ENV), storage_options=storage_options,
        )  # fmt: skip
    from voxelhub.catalog import Catalog
    from voxelhub.errors import NotFound
    from voxelhub.features.results import ResultStore
    from voxelhub.store.location import open_location

    site = site or os.environ.get(SITE_ENV)
    if not site:
        raise CohortError(
            f"name the source site with --site or ${SITE_ENV}: a pseudonym the receiving site "
            "may know you by (never a hospital's name)"
        )
    location = open_location(store)
    catalog = Catalog(location, catalog_url, create=False)
    try:
        projects = catalog.projects(projects=[project])
        if projects.empty:
            raise NotFound(f"no project {project!r} in {store}")
        if not bool(projects.iloc[0]["deidentify"]):
            raise IdentifiableProject(
                f"project {project!r} is not de-identified: its data may not leave the site "
                "as a cohort (ingest it into a de-identified project first)"
            )
        if bool(projects.iloc[0]["encrypted"]):
            raise IdentifiableProject(
                f"project {project!r} is encrypted with this site's key: its volumes cannot be "
                "read elsewhere"
            )
        rows = catalog.series(project=project, modality=modality, text=text)
        if volumes is not None:
            rows = rows[rows["volume_uid"].isin(volumes)]
        if rows.empty:
            raise CohortError(f"the selection in project {project!r} holds no volume")
        package = Package.at(target, storage_options)
        if package.files():
            raise CohortError(f"{target} is not empty: a package goes to a new folder")
        objects: dict[str, str] = {}
        entries = []
        for uid in sorted(rows["volume_uid"]):
            stored = catalog.stored_volume(uid)
            if not stored.deidentified:
                raise IdentifiableData(f"volume {uid} is not marked de-identified: not exported")
            row = _rows(catalog, uid)
            rel = f"volumes/{uid}.ome.zarr"
            objects.update(_copy_tree(location, row.pop("store_path"), package, rel))
            entries.append(
                {
                    "volume_uid": uid,
                    "path": rel,
                    "labels": list(stored.labels),
                    "affine_lps": [list(r) for r in stored.geometry.affine_lps],
                    **row,
                }
            )
        features = _export_features(ResultStore(catalog), sorted(rows["volume_uid"]), package)
        objects.update(features.pop("objects"))
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "provenance": {
                "source_site": site,
                "voxelhub_version": _version(),
                "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "project": project,
            },
            "deidentified": True,
            "deidentification": deidentification_used(),
            "selection": {"modality": modality, "text": text, "volumes": volumes},
            "volumes": entries,
            "features": features,
            "objects": objects,
        }
        body = json.dumps(manifest, indent=1, sort_keys=True, default=str).encode()
        # the manifest last: a folder without one is an export that did not finish
        package.put(MANIFEST, body)
        return Exported(target, len(entries), len(objects), hashlib.sha256(body).hexdigest())
    finally:
        catalog.close()


def _copy_tree(location: Any, src_rel: str, package: Package, dst_rel: str) -> dict[str, str]:
    """Copy a stored tree file by file into the package; each object's SHA-256."""
    src_root = location.full_path(src_rel)
    sums = {}
    for path in sorted(location.fs.find(src_root)):
        rel = posixpath.join(dst_rel, posixpath.relpath(path, src_root))
        data = location.fs.cat_file(path)
        sums[rel] = package.put(rel, data)
    return sums


def _export_features(results: Any, uids: list[str], package: Package) -> dict[str, Any]:
    table = results.load(series=uids)
    if table.empty:
        return {"objects": {}, "rows": 0, "settings": []}
    objects = {}
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    rel = "features/results.parquet"
    objects[rel] = package.put(rel, buffer.getvalue())
    hashes = sorted(table["settings_hash"].dropna().unique())
    for h in hashes:
        data = results.settings(h).to_json().encode()
        rel = f"features/settings/{h}.json"
        objects[rel] = package.put(rel, data)
    return {"objects": objects, "rows": len(table), "settings": hashes}
