"""Siemens mosaic support (placeholder until de-mosaicking lands: mosaics are refused)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from voxelhub.errors import GeometryError


@dataclass(frozen=True)
class MosaicLayout:
    tile_rows: int
    tile_columns: int
    tiles_per_row: int
    n_slices: int


def plan_mosaic(study_uid: str, series_uid: str, split: dict[str, Any], frames: list[Any]) -> list[Any]:
    raise GeometryError("Siemens mosaic: de-mosaicking is not available yet")


def demosaic(image: np.ndarray, layout: MosaicLayout) -> np.ndarray:
    raise GeometryError("Siemens mosaic: de-mosaicking is not available yet")
