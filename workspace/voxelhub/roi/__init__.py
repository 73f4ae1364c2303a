"""Regions of interest: label images in the store, made on dask arrays, or imported.

* :mod:`voxelhub.roi.labels`: label images next to their volume (OME-Zarr ``labels/``).
* :mod:`voxelhub.roi.make`: threshold, Otsu, morphology, on dask arrays chunk by chunk.
* :mod:`voxelhub.roi.components`: connected components with one global labelling.
* :mod:`voxelhub.roi.imports`: NIfTI / NRRD masks, DICOM SEG and RTSTRUCT onto a volume's grid.
"""

from __future__ import annotations

from voxelhub.roi.imports import ImportedLabels, import_mask, import_rtstruct, import_seg
from voxelhub.roi.labels import LabelImage, list_labels, read_labels, write_labels
from voxelhub.roi.make import (
    binary_closing,
    binary_dilation,
    binary_erosion,
    binary_opening,
    connected_components,
    largest_component,
    otsu,
    otsu_threshold,
    remove_small_components,
    threshold,
)

__all__ = [
    "ImportedLabels",
    "LabelImage",
    "binary_closing",
    "binary_dilation",
    "binary_erosion",
    "binary_opening",
    "connected_components",
    "import_mask",
    "import_rtstruct",
    "import_seg",
    "largest_component",
    "list_labels",
    "otsu",
    "otsu_threshold",
    "read_labels",
    "remove_small_components",
    "threshold",
    "write_labels",
]
