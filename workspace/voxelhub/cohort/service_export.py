"""``voxelhub cohort export`` on the hub: the data service builds the package, the kernel writes it.

On the hub the store belongs to the data service's account, so
:func:`voxelhub.cohort.export_cohort` comes here when its store is the service's URL: the
selection goes to ``POST api/projects/<name>/cohort-exports`` with the user's hub token; the
service (curators only: the package leaves the site) exports it as its own account, audits it
(``cohort.export``) and answers with the package as a tar, which is written here to the target
(a new folder or an empty ``s3://`` prefix), the manifest last.
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import TYPE_CHECKING, Any

from voxelhub.cohort.errors import CohortError
from voxelhub.cohort.export import Exported
from voxelhub.cohort.package import MANIFEST, Package

if TYPE_CHECKING:
    from voxelhub.service_catalog import ServiceCatalog


def export_through_service(
    catalog: ServiceCatalog,
    target: str,
    *,
    project: str,
    modality: str | None,
    text: str | None,
    volumes: list[str] | None,
    site: str | None,
    storage_options: dict[str, Any] | None,
) -> Exported:
    """Ask the service for the package and write it to ``target``."""
    package = Package.at(target, storage_options)
    if package.files():
        raise CohortError(f"{target} is not empty: a package goes to a new folder")
    body = {"modality": modality, "text": text, "volumes": volumes, "site": site}
    data, manifest_sha256 = catalog.export_cohort(
        project, {k: v for k, v in body.items() if v is not None}
    )
    manifest = None
    objects = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            source = tar.extractfile(member)
            assert source is not None
            if member.name == MANIFEST:
                manifest = source.read()
                continue
            package.put(member.name, source.read())
            objects += 1
    if manifest is None:
        raise CohortError(f"the data service's package for {project!r} has no {MANIFEST}")
    package.put(MANIFEST, manifest)  # last: a folder without one is an unfinished export
    count = len(json.loads(manifest).get("volumes") or [])
    return Exported(target, count, objects, manifest_sha256)
