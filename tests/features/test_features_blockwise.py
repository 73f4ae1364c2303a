"""Chunked texture matrices equal the single-block ones exactly, for any chunking."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from ibsi_report import phantom

from voxelhub.features import Settings, extract
from voxelhub.features.settings import AGGREGATIONS
from voxelhub.features.texture import blockwise, glcm, gldzm, glrlm, glszm, ngldm, ngtdm

FAMILIES = {
    "glcm": glcm.features,
    "glrlm": glrlm.features,
    "glszm": glszm.features,
    "gldzm": gldzm.features,
    "ngtdm": ngtdm.features,
    "ngldm": ngldm.features,
}


@st.composite
def grey_and_chunks(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    shape = draw(st.tuples(*(st.integers(2, 7) for _ in range(3))))
    levels = draw(arrays(np.int64, shape, elements=st.integers(1, 3)))
    inside = draw(arrays(np.bool_, shape, elements=st.booleans()).filter(lambda m: m.any()))
    chunks_a = draw(st.tuples(*(st.integers(1 if n < 4 else 2, n) for n in shape)))
    chunks_b = draw(st.tuples(*(st.integers(1 if n < 4 else 2, n) for n in shape)))
    return np.where(inside, levels, 0), chunks_a, chunks_b


def _same(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    diff = {k: (a[k], b[k]) for k in a if not (a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])))}
    assert not diff


@settings(max_examples=30, deadline=None)
@given(case=grey_and_chunks(), family=st.sampled_from(sorted(FAMILIES)))
def test_chunked_matrices_equal_the_single_block_exactly_for_any_chunk_size(
    case: tuple[np.ndarray, tuple[int, ...], tuple[int, ...]], family: str
) -> None:
    grey, chunks_a, chunks_b = case
    expected = FAMILIES[family](grey, 3, AGGREGATIONS)
    with dask.config.set(scheduler="synchronous"):
        got_a = blockwise.features(family, da.from_array(grey, chunks=chunks_a), 3, AGGREGATIONS)
        got_b = blockwise.features(family, da.from_array(grey, chunks=chunks_b), 3, AGGREGATIONS)
    _same(expected, got_a)
    _same(got_a, got_b)


def test_zones_and_runs_that_cross_many_chunks_diagonally_are_merged() -> None:
    """Diagonal zones/runs through 2-voxel chunks: they cross chunk borders at corners."""
    grey = np.zeros((6, 6, 6), dtype=np.int64)
    for i in range(6):
        grey[i, i, i] = 2
        grey[i, 5 - i, i] = 1
    lazy = da.from_array(grey, chunks=2)
    with dask.config.set(scheduler="synchronous"):
        for family, func in FAMILIES.items():
            _same(func(grey, 2, AGGREGATIONS), blockwise.features(family, lazy, 2, AGGREGATIONS))


@pytest.mark.parametrize("chunks", [(9, 14, 11)])
def test_extract_with_texture_chunks_equals_extract_on_the_ct_phantom(chunks: object) -> None:
    image, mask, spacing = phantom("ct")
    settings_c = Settings.preset("ibsi1_config_C")
    expected = extract(image, mask, settings_c, spacing=spacing)
    got = extract(image, mask, settings_c, spacing=spacing, texture_chunks=chunks)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
