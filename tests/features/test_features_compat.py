"""compat="pyradiomics": pyradiomics 3.1.4's names and values on the IBSI digital phantom."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from ibsi_report import ibsi_dir, phantom

from voxelhub.features import Discretisation, Resampling, Settings, extract
from voxelhub.features.compat import PYRADIOMICS_NAMES, bin_lower_bound


def _pyradiomics_reference() -> pd.DataFrame:
    table = pd.read_csv(ibsi_dir() / "pyradiomics_3.1.4_vs_ibsi_dig_phantom.csv")
    table["name"] = "original_" + table["family"] + "_" + table["pyradiomics_feature"]
    return table


def _phantom_pyradiomics() -> pd.DataFrame:
    image, mask, spacing = phantom("dig_phantom")
    # the settings of the comparison: binWidth 1, no resampling, 3D, GLDM alpha 0
    settings = Settings.preset("pyradiomics_default").replace(
        discretisation=Discretisation("fbs", bin_width=1.0)
    )
    return extract(image, mask, settings, spacing=spacing)


def test_every_pyradiomics_value_on_the_digital_phantom_is_reproduced_with_its_name() -> None:
    ref = _pyradiomics_reference()
    got = _phantom_pyradiomics().set_index("feature")
    assert set(ref["name"]) <= set(got.index)
    values = got.loc[ref["name"], "value"].to_numpy()
    # the reference file holds pyradiomics' values at 6 significant digits
    np.testing.assert_allclose(values, ref["pyradiomics_value"].to_numpy(), rtol=2e-5, atol=1e-9)
    assert list(got.loc[ref["name"], "ibsi_tag"]) == list(ref["ibsi_tag"])


def test_the_known_deviations_go_the_documented_way() -> None:
    image, mask, spacing = phantom("dig_phantom")
    ibsi = extract(image, mask, Settings.preset("ibsi1_dig_phantom"), spacing=spacing)
    ibsi = ibsi.set_index("ibsi_tag")["value"]
    pyrad = _phantom_pyradiomics().set_index("ibsi_tag")["value"]
    assert pyrad["stat_kurt"] == pytest.approx(ibsi["stat_kurt"] + 3.0)  # plain, not excess
    n = int((mask > 0).sum())
    ratio = np.sqrt((n - 1) / n)  # 1/N instead of 1/(N - 1) covariance
    for tag in ("morph_pca_maj_axis", "morph_pca_min_axis", "morph_pca_least_axis"):
        assert pyrad[tag] == pytest.approx(ibsi[tag] * ratio)
    assert pyrad["morph_pca_elongation"] == pytest.approx(ibsi["morph_pca_elongation"])
    assert pyrad["cm_joint_max_3D_avg"] == ibsi["cm_joint_max_3D_avg"]
    assert set(pyrad.index) <= set(PYRADIOMICS_NAMES) | set(
        t for t in ibsi.index if "_dim_" in t or "_int_" in t or "count" in t
    )


def test_fixed_bin_size_edges_sit_at_multiples_of_the_width() -> None:
    assert bin_lower_bound(-37.0, 25.0) == -50.0
    assert bin_lower_bound(50.0, 25.0) == 50.0
    rng = np.random.default_rng(1)
    image = rng.normal(0, 40, (8, 9, 10)).round()
    mask = np.ones(image.shape, dtype=bool)
    base = Settings(
        discretisation=Discretisation("fbs", bin_width=25.0),
        families=("intensity_histogram",),
    )
    ibsi = extract(image, mask, base, spacing=(1, 1, 1)).set_index("ibsi_tag")["value"]
    pyrad = extract(image, mask, base.replace(compat="pyradiomics"), spacing=(1, 1, 1))
    entropy = pyrad.set_index("ibsi_tag")["value"]["ih_entropy"]
    levels = np.floor((image - bin_lower_bound(image.min(), 25.0)) / 25.0).astype(int)
    p = np.bincount(levels.ravel()) / levels.size
    p = p[p > 0]
    assert entropy == pytest.approx(-(p * np.log2(p)).sum())
    assert entropy != ibsi["ih_entropy"]  # the IBSI edges start at the minimum


def test_compat_changes_the_hash_and_the_ibsi_default_keeps_old_hashes() -> None:
    base = Settings()
    assert "compat" not in base.to_dict()
    assert base.replace(compat="pyradiomics").hash != base.hash
    assert Settings.from_json(base.replace(compat="pyradiomics").to_json()).compat == "pyradiomics"
    with pytest.raises(ValueError, match="compat"):
        Settings(compat="mirp")  # type: ignore[arg-type]


def test_resampling_follows_simpleitk_in_compat_mode() -> None:
    image, mask, spacing = phantom("ct")
    res = Resampling(spacing=(2.0, 2.0, 2.0), order=1)
    settings = Settings(
        resampling=res,
        discretisation=Discretisation("fbs", bin_width=25.0),
        families=("intensity_statistics",),
        compat="pyradiomics",
    )
    table = extract(image, mask, settings, spacing=spacing).set_index("ibsi_tag")["value"]
    assert not float(table["stat_max"]).is_integer()  # interpolated values are not rounded
    ibsi = extract(image, mask, settings.replace(compat="ibsi"), spacing=spacing)
    assert ibsi.set_index("ibsi_tag")["value"]["stat_mean"] != table["stat_mean"]
