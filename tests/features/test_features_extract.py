"""extract(): numpy and lazy xarray inputs, reading only around the ROI, tidy and wide output."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from ibsi_report import phantom

from voxelhub.features import Settings, extract, wide


def _as_dataarray(
    array: np.ndarray, spacing: tuple[float, float, float], chunk: int
) -> xr.DataArray:
    data = da.from_array(array, chunks=(chunk, *array.shape[1:]))
    return xr.DataArray(data, dims=("z", "y", "x"), attrs={"spacing_zyx": list(spacing)})


def test_lazy_dataarray_gives_the_numpy_result_and_reads_only_the_roi_chunks() -> None:
    image, mask, spacing = phantom("ct")
    settings = Settings.preset("ibsi1_config_C")
    expected = extract(image, mask, settings, spacing=spacing)

    loaded: list[int] = []

    def record(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        if block_info is not None:
            loaded.append(block_info[0]["chunk-location"][0])
        return block

    chunk = 5
    lazy = _as_dataarray(image, spacing, chunk)
    lazy = lazy.copy(data=lazy.data.map_blocks(record, dtype=image.dtype))
    got = extract(lazy, _as_dataarray(mask, spacing, chunk), settings)
    pd.testing.assert_frame_equal(got, expected)

    z = np.flatnonzero(mask.any(axis=(1, 2)))
    n_chunks = -(-image.shape[0] // chunk)
    assert 0 < len(set(loaded)) < n_chunks
    assert min(loaded) >= (z[0] - 6) // chunk - 1
    assert max(loaded) <= (z[-1] + 6) // chunk + 1


def test_tidy_table_columns_and_wide_form() -> None:
    image, mask, spacing = phantom("dig_phantom")
    settings = Settings.preset("ibsi1_dig_phantom")
    table = extract(image, mask, settings, spacing=spacing)
    assert list(table.columns) == ["feature", "family", "value", "ibsi_tag", "settings_hash"]
    assert (table["settings_hash"] == settings.hash).all()
    assert table["ibsi_tag"].is_unique
    assert {"stat_kurt", "cm_joint_max_3D_avg", "ngl_dc_energy_2_5D"} <= set(table["ibsi_tag"])
    row = wide(table)
    assert row.shape == (1, len(table))
    assert row.loc[0, "stat_mean"] == pytest.approx(2.1486, abs=1e-4)
    many = pd.concat([table.assign(roi="a"), table.assign(roi="b")])
    assert wide(many, index="roi").shape == (2, len(table))


def test_families_can_be_chosen() -> None:
    image, mask, spacing = phantom("dig_phantom")
    table = extract(image, mask, Settings(families=("glcm",)), spacing=spacing)
    assert set(table["family"]) == {"glcm", "diagnostics"}


def test_numpy_input_needs_spacing_and_a_matching_nonempty_mask() -> None:
    image, mask, _ = phantom("dig_phantom")
    with pytest.raises(ValueError, match="spacing"):
        extract(image, mask)
    with pytest.raises(ValueError, match="shape"):
        extract(image, mask[:-1], spacing=(2, 2, 2))
    with pytest.raises(ValueError, match="empty"):
        extract(image, np.zeros_like(mask), spacing=(2, 2, 2))
