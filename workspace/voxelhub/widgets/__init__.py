"""Notebook widgets: study browser, slice viewer, 3-D view and feature panel.

::

    import voxelhub
    cat = voxelhub.open_catalog("store/")
    voxelhub.widgets.browse(cat)                 # table + thumbnails; a click opens the viewer
    voxelhub.widgets.view(volume, mask=labels)   # three planes, window/level, overlays
    voxelhub.widgets.view3d(volume)              # ipyniivue: MPR + volume rendering
    voxelhub.widgets.features_panel(cat)         # radiomics on a selection, with progress

Every widget calls the library's public API (catalog queries, ``open_series``, ``features``);
none opens a file itself.  The JavaScript ships inside the package (``widgets/static/*.js``) and
is sent to the browser by anywidget, so nothing is loaded from the internet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voxelhub.widgets.arrivals_panel import ArrivalsPanel
    from voxelhub.widgets.browser import StudyBrowser
    from voxelhub.widgets.feature_panel import FeaturePanel
    from voxelhub.widgets.slices import SliceViewer
    from voxelhub.widgets.upload_panel import UploadPanel
    from voxelhub.widgets.volume3d import VolumeViewer

__all__ = [
    "ArrivalsPanel",
    "FeaturePanel",
    "SliceViewer",
    "StudyBrowser",
    "UploadPanel",
    "VolumeViewer",
    "arrivals_panel",
    "browse",
    "features_panel",
    "upload_panel",
    "view",
    "view3d",
]


def view(volume: Any, mask: Any = None, **kwargs: Any) -> SliceViewer:
    """Three planes of ``volume`` with window/level and an optional label overlay.

    See :class:`voxelhub.widgets.slices.SliceViewer` for the keyword arguments.
    """
    from voxelhub.widgets.slices import SliceViewer

    return SliceViewer.from_volume(volume, mask=mask, **kwargs)


def view3d(volume: Any, mask: Any = None, **kwargs: Any) -> VolumeViewer:
    """Multiplanar and volume rendering of ``volume`` in ipyniivue (offline)."""
    from voxelhub.widgets.volume3d import VolumeViewer

    return VolumeViewer.from_volume(volume, mask=mask, **kwargs)


def browse(catalog: Any, **kwargs: Any) -> StudyBrowser:
    """A searchable, paged table of the catalog's series; selecting one opens the viewer."""
    from voxelhub.widgets.browser import StudyBrowser

    return StudyBrowser(catalog, **kwargs)


def features_panel(catalog: Any, **kwargs: Any) -> FeaturePanel:
    """Choose series, ROI and settings, run feature extraction, sort, export and plot."""
    from voxelhub.widgets.feature_panel import FeaturePanel

    return FeaturePanel(catalog, **kwargs)


def arrivals_panel(catalog: Any = None, project: str = "", **kwargs: Any) -> ArrivalsPanel:
    """What PACSes sent to the DICOM edge for ``project``, with states and reasons (curators)."""
    from voxelhub.widgets.arrivals_panel import ArrivalsPanel

    return ArrivalsPanel(catalog, project, **kwargs)


def upload_panel(catalog: Any = None) -> UploadPanel:
    """Send a zip of DICOM files to the data service into a project you curate (on the hub)."""
    from voxelhub.widgets.upload_panel import UploadPanel

    return UploadPanel(catalog)


def __getattr__(name: str) -> Any:
    modules = {
        "SliceViewer": "slices",
        "StudyBrowser": "browser",
        "VolumeViewer": "volume3d",
        "FeaturePanel": "feature_panel",
        "UploadPanel": "upload_panel",
        "ArrivalsPanel": "arrivals_panel",
    }
    if name in modules:
        import importlib

        return getattr(importlib.import_module(f"voxelhub.widgets.{modules[name]}"), name)
    raise AttributeError(f"module 'voxelhub.widgets' has no attribute {name!r}")
