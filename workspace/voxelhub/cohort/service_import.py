"""``voxelhub cohort import`` on the hub: the data service imports, the kernel sends the package.

On the hub the store belongs to the data service's account, so :func:`voxelhub.cohort.import_cohort`
comes here when its store is the service's URL: the package (a local folder or an ``s3://``
prefix, read with the caller's storage options) is sent as one tar stream to
``POST api/projects/<name>/cohorts`` with the user's hub token.  The service (curators only)
verifies every checksum, refuses identifiable data, imports and audits it (``cohort.import``);
its refusal comes back as the same :mod:`voxelhub.cohort.errors` class a local import raises.
"""

from __future__ import annotations

import io
import tarfile
from typing import TYPE_CHECKING, Any

from voxelhub.cohort import errors
from voxelhub.cohort.importing import Imported
from voxelhub.cohort.package import Package

if TYPE_CHECKING:
    from voxelhub.service_catalog import ServiceCatalog


def package_tar(package_url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The package's objects as an uncompressed tar (its manifest and volumes are compressed
    already), names relative to the package's root."""
    package = Package.at(package_url, storage_options)
    names = package.files()
    if not names:
        raise errors.UnsupportedPackage(f"no cohort package at {package_url}")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for rel in names:
            data = package.fs.cat_file(package.path(rel))
            info = tarfile.TarInfo(rel)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def import_through_service(
    catalog: ServiceCatalog,
    package_url: str,
    *,
    project: str,
    storage_options: dict[str, Any] | None = None,
) -> Imported:
    """Send the package, return what the service imported (or raise why it refused)."""
    done = catalog.import_cohort(project, package_tar(package_url, storage_options))
    done.pop("summary", None)
    return Imported(**done)
