"""Randomised properties: invariance to axis flips, exact identities, and brute-force checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from voxelhub.features import Settings, extract
from voxelhub.features.morphology import _spatial_autocorrelation
from voxelhub.features.texture import glrlm
from voxelhub.features.texture._common import OFFSETS_3D

SHAPE = (4, 5, 6)
cases = st.tuples(
    arrays(np.int16, SHAPE, elements=st.integers(1, 4)),
    arrays(np.bool_, SHAPE, elements=st.booleans()).filter(lambda m: m.sum() >= 4),
)
# Flips map the 13 directions onto themselves; the ROI shape and intensities are unchanged.
FLIP_INVARIANT = Settings(
    families=(
        "intensity_statistics",
        "intensity_histogram",
        "glcm",
        "glrlm",
        "glszm",
        "gldzm",
        "ngtdm",
        "ngldm",
    ),
    aggregations=("3D_avg", "3D_comb", "2D_avg", "2D_comb", "2_5D_avg", "2_5D_comb"),
)


@settings(max_examples=25, deadline=None)
@given(case=cases, axis=st.sampled_from([0, 1, 2]))
def test_features_do_not_change_when_an_axis_is_flipped(
    case: tuple[np.ndarray, np.ndarray], axis: int
) -> None:
    image, mask = case
    a = extract(image, mask, FLIP_INVARIANT, spacing=(2, 2, 2)).set_index("ibsi_tag")["value"]
    b = extract(
        np.flip(image, axis), np.flip(mask, axis), FLIP_INVARIANT, spacing=(2, 2, 2)
    ).set_index("ibsi_tag")["value"]
    features = [t for t in a.index if "_dim_" not in t]  # bounding-box diagnostics may move
    np.testing.assert_allclose(b[features], a[features], rtol=1e-9, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(case=cases)
def test_runs_cover_every_roi_voxel_once_per_direction(case: tuple[np.ndarray, np.ndarray]) -> None:
    image, mask = case
    grey = np.where(mask, image, 0).astype(np.int64)
    m, _ = glrlm.matrices(grey, 4, OFFSETS_3D)
    lengths = np.arange(1, m.shape[-1] + 1)
    per_direction = (m.sum(axis=(1, 2)) * lengths).sum(axis=1)
    np.testing.assert_array_equal(per_direction, mask.sum())


@settings(max_examples=15, deadline=None)
@given(case=cases, spacing=st.sampled_from([(1.0, 1.0, 1.0), (3.0, 0.8, 0.8)]))
def test_moran_and_geary_match_the_pairwise_definition(
    case: tuple[np.ndarray, np.ndarray], spacing: tuple[float, float, float]
) -> None:
    image, mask = case
    image = image.astype(np.float64)
    pos = np.argwhere(mask) * np.asarray(spacing)
    x = image[mask]
    if np.ptp(x) == 0:
        return
    d = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))
    w = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    y = x - x.mean()
    n = x.size
    moran = n / w.sum() * (w * np.outer(y, y)).sum() / (y**2).sum()
    geary = (n - 1) / (2 * w.sum()) * (w * (x[:, None] - x[None]) ** 2).sum() / (y**2).sum()
    got = _spatial_autocorrelation(image, mask, spacing)
    assert got == pytest.approx((moran, geary), rel=1e-9)
