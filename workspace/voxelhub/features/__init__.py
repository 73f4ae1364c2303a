"""IBSI-exact radiomics features: one typed settings object, one tidy table per ROI.

::

    from voxelhub.features import Settings, extract, wide
    table = extract(volume, mask, Settings.preset("ibsi1_config_C"))
"""

from __future__ import annotations

from voxelhub.features.extract import extract, prepare, wide
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
    "Settings",
    "extract",
    "prepare",
    "wide",
]
