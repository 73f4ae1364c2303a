"""VoxelHub: DICOM archives as de-identified, geometry-exact OME-Zarr volumes for notebooks.

The public API::

    report = voxelhub.ingest("dicom/", store="store/", project="demo")
    cat = voxelhub.open_catalog("store/")
    ct = cat.series(modality="CT")
    volume = voxelhub.open_series(ct.iloc[0], catalog=cat)   # xarray.DataArray, lazy (dask)
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import TYPE_CHECKING, Any

from voxelhub import config
from voxelhub.errors import (
    AccessDenied,
    CatalogError,
    DeidentificationError,
    DicomError,
    GeometryError,
    NotFound,
    StoreError,
    VoxelHubError,
)
from voxelhub.ingest import IngestReport, ingest
from voxelhub.widgets import browse, features_panel, view, view3d

if TYPE_CHECKING:
    import xarray as xr

    from voxelhub.catalog import Catalog
    from voxelhub.service_catalog import ServiceCatalog
    from voxelhub.store.location import Location, ServiceLocation, open_location  # noqa: F401
    from voxelhub.store.stored import Geometry, StoredVolume, VolumeFlag

# Imported on first use (PEP 562): SQLAlchemy, zarr, fsspec and pandas cost about 0.4 s, which
# every `voxelhub ingest` would otherwise pay before reading its first file.
_LAZY = {
    "Catalog": "voxelhub.catalog",
    "ServiceCatalog": "voxelhub.service_catalog",
    "Location": "voxelhub.store.location",
    "ServiceLocation": "voxelhub.store.location",
    "open_location": "voxelhub.store.location",
    "Geometry": "voxelhub.store.stored",
    "StoredVolume": "voxelhub.store.stored",
    "VolumeFlag": "voxelhub.store.stored",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # a submodule (``voxelhub.catalog``, ``voxelhub.store``…), as an eager import would
        # have left it on the package
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "Catalog",
    "CatalogError",
    "DeidentificationError",
    "DicomError",
    "Geometry",
    "GeometryError",
    "IngestReport",
    "Location",
    "NotFound",
    "ServiceCatalog",
    "StoreError",
    "StoredVolume",
    "VolumeFlag",
    "VoxelHubError",
    "__version__",
    "browse",
    "features_panel",
    "from_simpleitk",
    "ingest",
    "open_catalog",
    "open_location",
    "open_series",
    "to_nifti",
    "to_simpleitk",
    "view",
    "view3d",
]


def open_catalog(
    store: str | os.PathLike[str] | None = None,
    *,
    catalog_url: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Catalog | ServiceCatalog:
    """Open the catalog of a store (default: ``$VOXELHUB_STORE``).

    Parameters
    ----------
    store
        Local path, fsspec URL, or the data service's URL (on the hub: every query and read
        goes through it with your hub token, and you see your projects only).
    catalog_url
        SQLAlchemy URL; default SQLite inside a local store, or ``$VOXELHUB_CATALOG_URL``.
    storage_options
        Passed to fsspec for remote stores (credentials, endpoint); for the data service
        ``token`` (default ``$JUPYTERHUB_API_TOKEN``) and ``verify`` (a CA file).
    """
    from voxelhub.catalog import Catalog
    from voxelhub.service_catalog import ServiceCatalog
    from voxelhub.store.location import ServiceLocation, open_location

    store = store or config.default_store()
    if store is None:
        raise CatalogError("no store given: pass open_catalog(STORE) or set $VOXELHUB_STORE")
    location = open_location(store, storage_options)
    if isinstance(location, ServiceLocation):  # the service holds the catalog
        return ServiceCatalog(location)
    embedded = location.catalog_file()
    if embedded and catalog_url is None and not os.path.isdir(os.path.dirname(embedded)):
        raise CatalogError(
            f"no store at {os.path.dirname(embedded)}: run `voxelhub ingest … --store` first"
        )
    return Catalog(location, catalog_url, create=embedded is not None)


def to_simpleitk(volume: xr.DataArray) -> Any:
    """A SimpleITK image with the volume's exact origin, spacing and direction."""
    from voxelhub.store.volume import to_simpleitk as _to_simpleitk

    return _to_simpleitk(volume)


def from_simpleitk(image: Any, *, modality: str = "", name: str = "image") -> xr.DataArray:
    """A DataArray (same conventions as :func:`open_series`) from a SimpleITK image."""
    from voxelhub.store.volume import from_simpleitk as _from_simpleitk

    return _from_simpleitk(image, modality=modality, name=name)


def to_nifti(volume: xr.DataArray, path: str) -> str:
    """Write a volume as NIfTI with its exact affine."""
    from voxelhub.store.volume import to_nifti as _to_nifti

    return _to_nifti(volume, path)


def open_series(
    uid_or_row: Any, level: int = 0, *, catalog: Catalog | ServiceCatalog | None = None
) -> xr.DataArray:
    """Open a volume lazily as an ``xarray.DataArray`` with dims ``z, y, x`` in millimetres.

    Parameters
    ----------
    uid_or_row
        A volume UID, an unsplit SeriesInstanceUID, a row of ``Catalog.series()`` or a
        :class:`StoredVolume`.
    level
        Pyramid level (0 = full resolution).
    catalog
        The catalog to look in; default ``open_catalog()`` (``$VOXELHUB_STORE``).
    """
    cat = catalog or open_catalog()
    row = uid_or_row
    if hasattr(row, "to_dict"):
        row = row.to_dict()
    return cat.open_series(row, level=level)
