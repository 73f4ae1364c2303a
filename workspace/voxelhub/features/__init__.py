"""IBSI-exact radiomics features: one typed settings object, one tidy table per ROI.

::

    from voxelhub.features import Settings, extract, wide
    table = extract(volume, mask, Settings.preset("ibsi1_config_C"))
    cohort = extract_many(cat.series(modality="CT"), roi=my_mask_function, catalog=cat)
"""

from __future__ import annotations

from voxelhub.features.cohort import extract_many
from voxelhub.features.extract import extract, prepare, wide
from voxelhub.features.results import ResultStore, open_results
from voxelhub.features.settings import (
    AGGREGATIONS,
    FAMILIES,
    Discretisation,
    Resampling,
    Resegmentation,
    Settings,
)

__all__ = [
    "AGGREGATIONS",
    "FAMILIES",
    "Discretisation",
    "Resampling",
    "Resegmentation",
    "ResultStore",
    "Settings",
    "extract",
    "extract_many",
    "open_results",
    "prepare",
    "wide",
]
