"""First-order families: local intensity (IBSI 3.2), intensity statistics (3.3), intensity
histogram (3.4) and intensity-volume histogram (3.5)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import signal

from voxelhub.features.preprocess import PEAK_RADIUS_MM

__all__ = ["histogram", "local_intensity", "statistics", "volume_histogram"]

Array = NDArray[np.float64]


def _moments(x: Array, prefix: str) -> dict[str, float]:
    """The statistics shared by intensity statistics and the intensity histogram."""
    mean = float(x.mean())
    dev = x - mean
    var = float((dev**2).mean())
    p10, p25, p50, p75, p90 = (float(v) for v in np.percentile(x, [10, 25, 50, 75, 90]))
    robust = x[(x >= p10) & (x <= p90)]
    sd = var**0.5
    return {
        f"{prefix}_mean": mean,
        f"{prefix}_var": var,
        f"{prefix}_skew": float((dev**3).mean() / sd**3) if sd > 0 else 0.0,
        f"{prefix}_kurt": float((dev**4).mean() / var**2 - 3.0) if var > 0 else 0.0,
        f"{prefix}_median": p50,
        f"{prefix}_min": float(x.min()),
        f"{prefix}_p10": p10,
        f"{prefix}_p90": p90,
        f"{prefix}_max": float(x.max()),
        f"{prefix}_iqr": p75 - p25,
        f"{prefix}_range": float(x.max() - x.min()),
        f"{prefix}_mad": float(np.abs(dev).mean()),
        f"{prefix}_rmad": float(np.abs(robust - robust.mean()).mean()),
        f"{prefix}_medad": float(np.abs(x - p50).mean()),
        f"{prefix}_cov": sd / mean if mean != 0 else float("nan"),
        f"{prefix}_qcod": (p75 - p25) / (p75 + p25) if p75 + p25 != 0 else float("nan"),
    }


def statistics(values: Array) -> dict[str, float]:
    """Intensity statistics of the ROI intensities (IBSI kurtosis is excess kurtosis)."""
    out = _moments(values, "stat")
    out["stat_energy"] = float((values**2).sum())
    out["stat_rms"] = float(np.sqrt((values**2).mean()))
    return out


def histogram(levels: NDArray[np.int64], n_levels: int) -> dict[str, float]:
    """Intensity histogram features of the discretised ROI (grey levels 1..Ng)."""
    x = levels.astype(np.float64)
    out = _moments(x, "ih")
    counts = np.bincount(levels, minlength=n_levels + 1)[1:].astype(np.float64)
    p = counts / counts.sum()
    nz = p[p > 0]
    modes = np.flatnonzero(counts == counts.max()) + 1
    mean = out["ih_mean"]
    out["ih_mode"] = float(modes[np.argmin(np.abs(modes - mean))])
    out["ih_entropy"] = float(-(nz * np.log2(nz)).sum())
    out["ih_uniformity"] = float((p**2).sum())
    grad = np.gradient(counts) if counts.size > 1 else np.zeros(1)
    out["ih_max_grad"] = float(grad.max())
    out["ih_max_grad_g"] = float(np.argmax(grad) + 1)
    out["ih_min_grad"] = float(grad.min())
    out["ih_min_grad_g"] = float(np.argmin(grad) + 1)
    return out


def volume_histogram(
    intensities: Array,
    lower: float | None = None,
    upper: float | None = None,
    step: float | None = None,
) -> dict[str, float]:
    """Intensity-volume histogram features (IBSI 3.5).

    ``intensities`` are the (discretised) values of the ROI voxels; the intensity fraction is
    taken over ``[lower, upper]`` (default: the ROI minimum and maximum). With ``step`` the
    intensities lie on a lattice and absent lattice values count too (IBSI sweeps every
    grey level, not only those present).
    """
    lo = float(intensities.min()) if lower is None else lower
    hi = float(intensities.max()) if upper is None else upper
    if step is None:
        values = np.unique(intensities)
    else:
        first = lo + step * np.ceil((float(intensities.min()) - lo) / step - 1e-9)
        values = np.arange(first, float(intensities.max()) + step / 2, step)
    sorted_x = np.sort(intensities)
    n = sorted_x.size
    # fraction of the volume at or above each distinct intensity
    nu = 1.0 - np.searchsorted(sorted_x, values, side="left") / n
    gamma = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)

    def v_at(x: float) -> float:
        hit = gamma >= x
        return float(nu[hit][0]) if hit.any() else 0.0

    def i_at(x: float) -> float:
        hit = nu <= x
        return float(values[hit][0]) if hit.any() else float(values[-1] + 1)

    out = {
        "ivh_v10": v_at(0.10),
        "ivh_v90": v_at(0.90),
        "ivh_i10": i_at(0.10),
        "ivh_i90": i_at(0.90),
    }
    out["ivh_diff_v10_v90"] = out["ivh_v10"] - out["ivh_v90"]
    out["ivh_diff_i10_i90"] = out["ivh_i10"] - out["ivh_i90"]
    return out


def local_intensity(
    image: Array, mask: NDArray[np.bool_], spacing: tuple[float, float, float]
) -> dict[str, float]:
    """Local and global intensity peak: mean of a 1 cm³ sphere around ROI voxels.

    ``image`` must extend at least the sphere radius beyond the ROI where the scan does; the
    sphere takes every image voxel whose centre is within the radius (IBSI 3.2).
    """
    half = [int(PEAK_RADIUS_MM // s) for s in spacing]
    grids = np.meshgrid(
        *[np.arange(-h, h + 1) * s for h, s in zip(half, spacing, strict=True)], indexing="ij"
    )
    ball = (sum(g**2 for g in grids) <= PEAK_RADIUS_MM**2 + 1e-9).astype(np.float64)
    sums = signal.fftconvolve(image, ball, mode="same")
    counts = signal.fftconvolve(np.ones_like(image), ball, mode="same")
    local_mean = sums / np.rint(counts)
    roi_values = image[mask]
    at_max = mask & (image == roi_values.max())
    return {
        "loc_peak_loc": float(local_mean[at_max].max()),
        "loc_peak_glob": float(local_mean[mask].max()),
    }
