"""One ROI in, one tidy table of IBSI features out; reads only the mask's bounding box."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from voxelhub.features import compat, intensity, morphology
from voxelhub.features.preprocess import (
    INTERPOLATION_SUPPORT,
    PEAK_RADIUS_MM,
    Region,
    bounding_box,
    discretise,
    resample,
    resegment,
)
from voxelhub.features.settings import Discretisation, Settings
from voxelhub.features.texture import blockwise, glcm, gldzm, glrlm, glszm, ngldm, ngtdm

__all__ = ["compute", "extract", "image_diagnostics", "prepare", "wide"]

log = logging.getLogger(__name__)

_TEXTURE = {
    "glcm": glcm.features,
    "glrlm": glrlm.features,
    "glszm": glszm.features,
    "gldzm": gldzm.features,
    "ngtdm": ngtdm.features,
}


def _spacing_of(obj: Any, spacing: Sequence[float] | None) -> tuple[float, float, float]:
    if spacing is None:
        attrs = getattr(obj, "attrs", {})
        if "spacing_zyx" not in attrs:
            raise ValueError(
                "no spacing: pass spacing=(dz, dy, dx) in mm for numpy inputs, or a DataArray "
                "from voxelhub.open_series (attrs['spacing_zyx'])"
            )
        spacing = attrs["spacing_zyx"]
    dz, dy, dx = (float(s) for s in spacing)
    return dz, dy, dx


def _raw(obj: Any) -> Any:
    """The array behind a DataArray (dask stays lazy), or the array itself."""
    return obj.data if hasattr(obj, "dims") and hasattr(obj, "attrs") else obj


def _mask_bbox(mask: Any) -> tuple[tuple[int, int], ...]:
    """Bounding box of a numpy or dask mask; for dask one pass of small reductions."""
    if hasattr(mask, "dask"):
        import dask

        nonzero = mask != 0
        projections = dask.compute(*(nonzero.any(axis=ax) for ax in ((1, 2), (0, 2), (0, 1))))
        out = []
        for p in projections:
            hit = np.flatnonzero(p)
            if hit.size == 0:
                raise ValueError("the mask is empty: no voxel is in the ROI")
            out.append((int(hit[0]), int(hit[-1])))
        return tuple(out)
    return bounding_box(np.asarray(mask) != 0)


def prepare(
    volume: Any,
    mask: Any,
    settings: Settings,
    spacing: Sequence[float] | None = None,
) -> Region:
    """Crop, resample and re-segment: the processed ROI region every family works on.

    Only the mask's bounding box plus a margin (the intensity-peak sphere and the
    interpolation support) is read from ``volume`` and ``mask``.
    """
    if "c" in getattr(volume, "dims", ()):
        raise ValueError(
            f"{getattr(volume, 'name', None) or 'volume'} is a colour volume (channels "
            f"{', '.join(str(c) for c in volume['c'].values)}): features need one channel of "
            "intensities; select one (volume.sel(c='R')) or convert to grey first"
        )
    sp = _spacing_of(volume, spacing)
    vol, msk = _raw(volume), _raw(mask)
    if tuple(vol.shape) != tuple(msk.shape):
        raise ValueError(f"volume {tuple(vol.shape)} and mask {tuple(msk.shape)} differ in shape")
    full = (int(vol.shape[0]), int(vol.shape[1]), int(vol.shape[2]))
    bbox = _mask_bbox(msk)
    res = settings.resampling
    if res is not None and settings.compat == "pyradiomics":
        # SimpleITK as pyradiomics calls it: corner-aligned grid, no rounding, NN mask
        res = dataclasses.replace(
            res, grid_alignment="corner", round_intensities=False, mask_order=0
        )
    pad = INTERPOLATION_SUPPORT[res.order if res is not None else 0] + 1
    crop = []
    for ax in range(3):
        wanted = res.spacing[ax] if res is not None else None
        new_s = sp[ax] if wanted is None else float(wanted)
        reach = math.ceil((PEAK_RADIUS_MM + 2.0 * new_s) / sp[ax]) + pad
        crop.append(slice(max(0, bbox[ax][0] - reach), min(full[ax], bbox[ax][1] + reach + 1)))
    sl = tuple(crop)
    img_crop = np.asarray(vol[sl], dtype=np.float64)
    mask_crop = np.asarray(msk[sl]) != 0
    offset = (sl[0].start, sl[1].start, sl[2].start)
    image, morph_mask, new_sp = resample(
        img_crop,
        mask_crop,
        sp,
        res,
        margin_mm=PEAK_RADIUS_MM,
        full_shape=full,
        offset=offset,
    )
    int_mask = resegment(image, morph_mask, settings.resegmentation)
    if not int_mask.any():
        raise ValueError("no ROI voxel is left after re-segmentation; check the range")
    diag = _diagnostics(full, sp, mask_crop, img_crop, morph_mask, int_mask, image, new_sp)
    return Region(image, morph_mask, int_mask, new_sp, diag)


def _roi_stats(
    tag: str, mask: NDArray[np.bool_], image: NDArray[np.float64], which: str = "int"
) -> dict[str, float]:
    bb = bounding_box(mask)
    out = {
        f"{which}_mask_bb_dim_z_{tag}_roi": float(bb[0][1] - bb[0][0] + 1),
        f"{which}_mask_bb_dim_y_{tag}_roi": float(bb[1][1] - bb[1][0] + 1),
        f"{which}_mask_bb_dim_x_{tag}_roi": float(bb[2][1] - bb[2][0] + 1),
        f"{which}_mask_vox_count_{tag}_roi": float(mask.sum()),
    }
    if which == "morph":
        return out
    vals = image[mask]
    return {
        **out,
        f"int_mask_mean_int_{tag}_roi": float(vals.mean()),
        f"int_mask_min_int_{tag}_roi": float(vals.min()),
        f"int_mask_max_int_{tag}_roi": float(vals.max()),
    }


def _diagnostics(
    full: tuple[int, int, int],
    spacing: tuple[float, float, float],
    mask0: NDArray[np.bool_],
    image0: NDArray[np.float64],
    morph: NDArray[np.bool_],
    intm: NDArray[np.bool_],
    image: NDArray[np.float64],
    new_spacing: tuple[float, float, float],
) -> dict[str, float]:
    """IBSI diagnostic values that need no pass over the whole image."""
    from voxelhub.features.preprocess import new_grid

    out: dict[str, float] = {}
    new_full = [
        new_grid(n, s, ns, "center")[0] for n, s, ns in zip(full, spacing, new_spacing, strict=True)
    ]
    for name, ax in (("z", 0), ("y", 1), ("x", 2)):
        out[f"img_dim_{name}_init_img"] = float(full[ax])
        out[f"vox_dim_{name}_init_img"] = spacing[ax]
        out[f"img_dim_{name}_interp_img"] = float(new_full[ax])
        out[f"vox_dim_{name}_interp_img"] = new_spacing[ax]
        for step in ("init", "interp", "reseg"):
            out[f"int_mask_dim_{name}_{step}_roi"] = float(
                full[ax] if step == "init" else new_full[ax]
            )
    out.update(_roi_stats("init", mask0, image0))
    out.update(_roi_stats("interp", morph, image))
    out.update(_roi_stats("reseg", intm, image))
    out.update(_roi_stats("init", mask0, image0, "morph"))
    out.update(_roi_stats("interp", morph, image, "morph"))
    out.update(_roi_stats("reseg", morph, image, "morph"))  # the morphological mask is kept
    return out


def image_diagnostics(
    volume: Any, settings: Settings, spacing: Sequence[float] | None = None
) -> dict[str, float]:
    """Whole-image intensity diagnostics (IBSI): mean, min and max before and after
    interpolation. This reads and resamples the whole image, so it is opt-in."""
    sp = _spacing_of(volume, spacing)
    vol = np.asarray(_raw(volume), dtype=np.float64)
    out = {
        "mean_int_init_img": float(vol.mean()),
        "min_int_init_img": float(vol.min()),
        "max_int_init_img": float(vol.max()),
    }
    if settings.resampling is not None:
        vol, _, _ = resample(vol, np.ones(vol.shape, dtype=bool), sp, settings.resampling)
    out["mean_int_interp_img"] = float(vol.mean())
    out["min_int_interp_img"] = float(vol.min())
    out["max_int_interp_img"] = float(vol.max())
    return out


def _ivh_values(
    values: NDArray[np.float64], settings: Settings
) -> tuple[NDArray[np.float64], float | None, float | None, float | None]:
    """Intensities for the IVH, the range of the intensity fraction and the lattice step."""
    disc: Discretisation = settings.ivh_discretisation
    lower, upper = settings.resegmentation.range
    if disc.method == "none":
        integral = bool(np.all(values == np.round(values)))
        return values, lower, upper, (1.0 if integral else None)
    levels, n_bins = discretise(values, disc, settings.resegmentation)
    if disc.method == "fbn":
        return levels.astype(np.float64), 1.0, float(n_bins), 1.0
    width = float(disc.bin_width or 1.0)
    lo = disc.lower_bound if disc.lower_bound is not None else lower
    lo = float(values.min()) if lo is None else lo
    centres = np.asarray(lo + (levels - 0.5) * width, dtype=np.float64)
    return centres, lo + 0.5 * width, (None if upper is None else float(upper)), width


def compute(
    region: Region,
    settings: Settings,
    *,
    texture_chunks: int | Sequence[int] | None = None,
) -> dict[str, tuple[str, float]]:
    """All requested features of a processed region: ``{ibsi_tag: (family, value)}``.

    With ``texture_chunks`` the texture matrices are built chunk by chunk in a dask tree
    reduction (:mod:`voxelhub.features.texture.blockwise`), for ROIs too large for one block
    of work; the values are identical to the single-block ones.
    """
    fam = set(settings.families)
    pyrad = settings.compat == "pyradiomics"
    out: dict[str, tuple[str, float]] = {}

    def put(family: str, values: dict[str, float]) -> None:
        out.update({k: (family, v) for k, v in values.items()})

    put("diagnostics", region.diagnostics)
    img, intm = region.image, region.int_mask
    if "morphology" in fam:
        put(
            "morphology",
            morphology.features(
                img, region.morph_mask, intm, region.spacing, pca_ddof=0 if pyrad else 1
            ),
        )
    if "local_intensity" in fam:
        put("local_intensity", intensity.local_intensity(img, intm, region.spacing))
    values = img[intm]
    if "intensity_statistics" in fam:
        stats = intensity.statistics(values)
        if pyrad:  # pyradiomics reports plain kurtosis, IBSI excess kurtosis
            stats["stat_kurt"] += 3.0
        put("intensity_statistics", stats)
    if "intensity_volume_histogram" in fam:
        ivh, lo, hi, step = _ivh_values(values, settings)
        put("intensity_volume_histogram", intensity.volume_histogram(ivh, lo, hi, step))
    disc = settings.discretisation
    if pyrad and disc.method == "fbs" and disc.lower_bound is None:
        lower = compat.bin_lower_bound(float(values.min()), float(disc.bin_width or 1.0))
        disc = dataclasses.replace(disc, lower_bound=lower)
    levels, n_levels = discretise(values, disc, settings.resegmentation)
    if "intensity_histogram" in fam:
        put("intensity_histogram", intensity.histogram(levels, n_levels))
    textures = [f for f in ("glcm", "glrlm", "glszm", "gldzm", "ngtdm", "ngldm") if f in fam]
    if textures:
        bb = bounding_box(region.morph_mask)  # contains the intensity mask
        sl = tuple(slice(a, b + 1) for a, b in bb)
        grey = np.zeros(img.shape, dtype=np.int64)
        grey[intm] = levels
        grey = grey[sl]
        if texture_chunks is not None:
            import dask.array as da

            lazy = da.from_array(grey, chunks=texture_chunks)
            for name in textures:
                edge = region.morph_mask[sl] if name == "gldzm" else None
                put(
                    name,
                    blockwise.features(
                        name,
                        lazy,
                        n_levels,
                        settings.aggregations,
                        alpha=settings.ngldm_alpha,
                        edge_mask=edge,
                    ),
                )
            return out
        for name in textures:
            if name == "ngldm":
                vals = ngldm.features(grey, n_levels, settings.aggregations, settings.ngldm_alpha)
            elif name == "gldzm":
                # IBSI: the distance to the edge is measured in the morphological mask
                vals = gldzm.features(grey, n_levels, settings.aggregations, region.morph_mask[sl])
            else:
                vals = _TEXTURE[name](grey, n_levels, settings.aggregations)
            put(name, vals)
    return out


def extract(
    volume: Any,
    mask: Any,
    settings: Settings | None = None,
    *,
    spacing: Sequence[float] | None = None,
    whole_image_diagnostics: bool = False,
    texture_chunks: int | Sequence[int] | None = None,
) -> pd.DataFrame:
    """IBSI features of one ROI as a tidy table.

    Parameters
    ----------
    volume
        Intensities, z y x: a numpy array, or an ``xarray.DataArray`` as
        :func:`voxelhub.open_series` returns it (dask-backed; only the chunks around the
        mask's bounding box are read).
    mask
        Same shape; non-zero voxels are the ROI.
    settings
        Processing and families; default :class:`Settings` (no resampling, grey levels as
        given, all families, 3D).
    spacing
        ``(dz, dy, dx)`` in mm; required for numpy inputs, else ``attrs["spacing_zyx"]``.
    whole_image_diagnostics
        Also report the IBSI whole-image intensity diagnostics; this reads and resamples the
        whole volume, which feature extraction itself never does.
    texture_chunks
        Build the texture matrices from chunks of this size (voxels per axis, after
        processing) in a dask tree reduction, for large ROIs; same values as without.

    Returns
    -------
    pandas.DataFrame
        One row per feature: ``feature``, ``family``, ``value``, ``ibsi_tag``,
        ``settings_hash``. Diagnostics (ROI sizes after each step) have family
        ``"diagnostics"``.
    """
    settings = settings or Settings()
    region = prepare(volume, mask, settings, spacing)
    values = compute(region, settings, texture_chunks=texture_chunks)
    if whole_image_diagnostics:
        extra = image_diagnostics(volume, settings, spacing)
        values.update({k: ("diagnostics", v) for k, v in extra.items()})
    tags = list(values)
    names = list(values)
    if settings.compat == "pyradiomics":
        renamed = [compat.pyradiomics_name(t) for t in tags]
        keep = [
            n is not None or values[t][0] == "diagnostics"
            for t, n in zip(tags, renamed, strict=True)
        ]
        names = [n or t for t, n, k in zip(tags, renamed, keep, strict=True) if k]
        tags = [t for t, k in zip(tags, keep, strict=True) if k]
    return pd.DataFrame(
        {
            "feature": names,
            "family": [values[t][0] for t in tags],
            "value": [values[t][1] for t in tags],
            "ibsi_tag": tags,
            "settings_hash": settings.hash,
        }
    )


def wide(table: pd.DataFrame, index: str | Sequence[str] | None = None) -> pd.DataFrame:
    """One row per ROI (per ``index`` value), one column per feature."""
    if index is None:
        row = table.set_index("feature")["value"]
        return row.to_frame().T.reset_index(drop=True)
    return table.pivot_table(index=index, columns="feature", values="value", aggfunc="first")
