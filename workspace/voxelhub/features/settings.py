"""Image-processing and feature settings as one typed, hashable, serialisable object.

Every result row carries ``Settings.hash`` so a number can always be traced back to the exact
processing that produced it; presets reproduce the IBSI chapter 1 benchmark configurations.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "AGGREGATIONS",
    "FAMILIES",
    "Discretisation",
    "Resampling",
    "Resegmentation",
    "Settings",
]

FAMILIES: tuple[str, ...] = (
    "morphology",
    "local_intensity",
    "intensity_statistics",
    "intensity_histogram",
    "intensity_volume_histogram",
    "glcm",
    "glrlm",
    "glszm",
    "gldzm",
    "ngtdm",
    "ngldm",
)
"""Feature families, named as in the IBSI reference table."""

AGGREGATIONS: tuple[str, ...] = (
    "3D_avg",
    "3D_comb",
    "2D_avg",
    "2D_comb",
    "2_5D_avg",
    "2_5D_comb",
)
"""Texture aggregations (IBSI 3.1.1); zone families use the dimension part (3D, 2D, 2_5D)."""

Interpolation = Literal[0, 1, 3]
GridAlignment = Literal["center", "corner"]
BinMethod = Literal["fbn", "fbs", "none"]
Compat = Literal["ibsi", "pyradiomics"]


@dataclass(frozen=True)
class Resampling:
    """Interpolation to a new voxel grid (IBSI 2.4).

    Parameters
    ----------
    spacing
        New spacing ``(dz, dy, dx)`` in mm; ``None`` for an axis keeps it (2D in-plane
        resampling keeps ``dz``).
    order
        Image interpolation: 0 nearest, 1 (tri)linear, 3 cubic B-spline.
    mask_order
        Mask interpolation order (IBSI uses linear, then ``mask_threshold``).
    mask_threshold
        Partial-volume fraction at or above which an interpolated voxel is in the ROI.
    grid_alignment
        ``"center"`` aligns the centres of the old and new grids as IBSI requires;
        ``"corner"`` keeps the outer corner (SimpleITK / pyradiomics behaviour).
    round_intensities
        Round interpolated intensities to integers (IBSI does so for CT, HU are integers).
    """

    spacing: tuple[float | None, float | None, float | None]
    order: Interpolation = 1
    mask_order: Interpolation = 1
    mask_threshold: float = 0.5
    grid_alignment: GridAlignment = "center"
    round_intensities: bool = True


@dataclass(frozen=True)
class Resegmentation:
    """Which voxels of the ROI enter intensity-based features (IBSI 2.5).

    Parameters
    ----------
    range
        ``(lower, upper)`` inclusive; ``None`` for an open side.
    outlier_sigma
        Keep voxels within mean ± ``outlier_sigma`` standard deviations (applied after
        ``range``); ``None`` to skip.
    """

    range: tuple[float | None, float | None] = (None, None)
    outlier_sigma: float | None = None


@dataclass(frozen=True)
class Discretisation:
    """Grey-level discretisation (IBSI 2.7).

    Parameters
    ----------
    method
        ``"fbn"`` fixed bin number, ``"fbs"`` fixed bin size, ``"none"`` when the
        intensities already are grey levels 1, 2, … (the digital phantom).
    bin_number
        Number of bins for ``"fbn"``.
    bin_width
        Bin width for ``"fbs"``, in intensity units.
    lower_bound
        Lower edge of the first ``"fbs"`` bin; ``None`` takes the re-segmentation lower bound,
        or the ROI minimum when there is none (IBSI).
    """

    method: BinMethod = "none"
    bin_number: int | None = None
    bin_width: float | None = None
    lower_bound: float | None = None

    def __post_init__(self) -> None:
        if self.method == "fbn" and not (self.bin_number and self.bin_number > 0):
            raise ValueError("fixed bin number discretisation needs bin_number > 0")
        if self.method == "fbs" and not (self.bin_width and self.bin_width > 0):
            raise ValueError("fixed bin size discretisation needs bin_width > 0")


@dataclass(frozen=True)
class Settings:
    """Everything that decides a feature value, except the image and the mask.

    Parameters
    ----------
    resampling
        ``None`` keeps the acquisition grid.
    resegmentation
        Range and outlier re-segmentation of the intensity mask.
    discretisation
        For the intensity histogram and the texture families.
    ivh_discretisation
        For the intensity-volume histogram (IBSI uses a finer one).
    families
        Families to compute, a subset of :data:`FAMILIES`.
    aggregations
        Texture aggregations, a subset of :data:`AGGREGATIONS`.
    distance
        Chebyshev neighbour distance for GLCM, NGTDM and NGLDM.
    ngldm_alpha
        NGLDM coarseness: neighbours within this many grey levels are dependent.
    compat
        ``"ibsi"`` (default) computes the IBSI definitions; ``"pyradiomics"`` reproduces
        pyradiomics 3.1's names and known deviations (:mod:`voxelhub.features.compat`), to
        compare with published pyradiomics results.
    """

    resampling: Resampling | None = None
    resegmentation: Resegmentation = field(default_factory=Resegmentation)
    discretisation: Discretisation = field(default_factory=Discretisation)
    ivh_discretisation: Discretisation = field(default_factory=Discretisation)
    families: tuple[str, ...] = FAMILIES
    aggregations: tuple[str, ...] = ("3D_avg", "3D_comb")
    distance: int = 1
    ngldm_alpha: int = 0
    compat: Compat = "ibsi"

    def __post_init__(self) -> None:
        unknown = set(self.families) - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown feature families {sorted(unknown)}; known: {FAMILIES}")
        unknown = set(self.aggregations) - set(AGGREGATIONS)
        if unknown:
            raise ValueError(f"unknown aggregations {sorted(unknown)}; known: {AGGREGATIONS}")
        if self.compat not in ("ibsi", "pyradiomics"):
            raise ValueError(f"unknown compat {self.compat!r}; known: 'ibsi', 'pyradiomics'")
        if self.distance != 1:
            raise ValueError("only distance=1 is implemented (the IBSI benchmark value)")

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (tuples become lists).

        ``compat`` is left out while it is the default ``"ibsi"``, so the hashes of settings
        made before the option existed (and stored with their results) stay valid.
        """
        data: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        if data.get("compat") == "ibsi":
            del data["compat"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing ones take defaults."""
        data = dict(data)
        known = set(cls.__dataclass_fields__)
        extra = set(data) - known
        if extra:
            raise ValueError(f"unknown settings {sorted(extra)}")
        res = data.pop("resampling", None)
        kwargs: dict[str, Any] = {}
        if res is not None:
            res = dict(res)
            res["spacing"] = tuple(res["spacing"])
            kwargs["resampling"] = Resampling(**res)
        if "resegmentation" in data:
            reseg = dict(data.pop("resegmentation"))
            if "range" in reseg:
                reseg["range"] = tuple(reseg["range"])
            kwargs["resegmentation"] = Resegmentation(**reseg)
        for key in ("discretisation", "ivh_discretisation"):
            if key in data:
                kwargs[key] = Discretisation(**data.pop(key))
        for key in ("families", "aggregations"):
            if key in data:
                kwargs[key] = tuple(data.pop(key))
        return cls(**kwargs, **data)

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, so equal settings give equal text."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    @property
    def hash(self) -> str:
        """SHA-256 of the canonical JSON, stored with every result."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (the object itself is frozen)."""
        return replace(self, **changes)

    # -- presets ---------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> Settings:
        """A named published set-up; see :data:`PRESETS` for the names.

        The IBSI chapter 1 configurations (reference manual, table "benchmark
        configurations"): the digital phantom is used as is; configurations A–E process the
        CT phantom. All use distance 1, NGLDM alpha 0, linear mask interpolation with a
        0.5 partial-volume threshold and integer rounding after interpolation.
        """
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None


_2D = ("2D_avg", "2D_comb", "2_5D_avg", "2_5D_comb")
_3D = ("3D_avg", "3D_comb")

PRESETS: dict[str, Settings] = {
    # Grey levels 1..6 are the bins; every aggregation has reference values.
    "ibsi1_dig_phantom": Settings(aggregations=_3D + _2D),
    # A: 2D, no interpolation, range [-500, 400] HU, FBS 25 HU; IVH on the integer HU.
    "ibsi1_config_A": Settings(
        resegmentation=Resegmentation(range=(-500.0, 400.0)),
        discretisation=Discretisation("fbs", bin_width=25.0),
        ivh_discretisation=Discretisation("none"),
        aggregations=_2D,
    ),
    # B: 2D, bilinear in-plane to 2x2 mm, range [-500, 400] HU, FBN 32; IVH on integer HU.
    "ibsi1_config_B": Settings(
        resampling=Resampling(spacing=(None, 2.0, 2.0), order=1),
        resegmentation=Resegmentation(range=(-500.0, 400.0)),
        discretisation=Discretisation("fbn", bin_number=32),
        ivh_discretisation=Discretisation("none"),
        aggregations=_2D,
    ),
    # C: 3D, trilinear to 2 mm isotropic, range [-1000, 400] HU, FBS 25 HU; IVH FBS 2.5 HU.
    "ibsi1_config_C": Settings(
        resampling=Resampling(spacing=(2.0, 2.0, 2.0), order=1),
        resegmentation=Resegmentation(range=(-1000.0, 400.0)),
        discretisation=Discretisation("fbs", bin_width=25.0),
        ivh_discretisation=Discretisation("fbs", bin_width=2.5),
        aggregations=_3D,
    ),
    # D: 3D, trilinear to 2 mm, outliers beyond 3 sigma removed, FBN 32; IVH on integer HU.
    "ibsi1_config_D": Settings(
        resampling=Resampling(spacing=(2.0, 2.0, 2.0), order=1),
        resegmentation=Resegmentation(outlier_sigma=3.0),
        discretisation=Discretisation("fbn", bin_number=32),
        ivh_discretisation=Discretisation("none"),
        aggregations=_3D,
    ),
    # E: 3D, tricubic spline to 2 mm, range [-1000, 400] HU then 3 sigma, FBN 32; IVH FBN 1000.
    "ibsi1_config_E": Settings(
        resampling=Resampling(spacing=(2.0, 2.0, 2.0), order=3),
        resegmentation=Resegmentation(range=(-1000.0, 400.0), outlier_sigma=3.0),
        discretisation=Discretisation("fbn", bin_number=32),
        ivh_discretisation=Discretisation("fbn", bin_number=1000),
        aggregations=_3D,
    ),
    # pyradiomics 3.1 defaults (binWidth 25, no resampling, 3D, GLDM alpha 0) with its names
    # and deviations, for comparison with published pyradiomics results.
    "pyradiomics_default": Settings(
        discretisation=Discretisation("fbs", bin_width=25.0),
        families=(
            "morphology",
            "intensity_statistics",
            "intensity_histogram",
            "glcm",
            "glrlm",
            "glszm",
            "ngtdm",
            "ngldm",
        ),
        aggregations=("3D_avg",),
        compat="pyradiomics",
    ),
}
"""Named presets for :meth:`Settings.preset`."""
