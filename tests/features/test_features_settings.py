"""Settings: typed, frozen, serialisable, and hashed canonically."""

from __future__ import annotations

import dataclasses

import pytest

from voxelhub.features import Discretisation, Resampling, Resegmentation, Settings
from voxelhub.features.settings import PRESETS

PRESET_NAMES = ["ibsi1_dig_phantom", *(f"ibsi1_config_{c}" for c in "ABCDE")]


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_round_trip_through_dict_and_json(name: str) -> None:
    settings = Settings.preset(name)
    assert Settings.from_dict(settings.to_dict()) == settings
    assert Settings.from_json(settings.to_json()) == settings
    assert Settings.from_json(settings.to_json()).hash == settings.hash


def test_hash_is_canonical_and_changes_with_any_setting() -> None:
    a = Settings.preset("ibsi1_config_C")
    b = Settings.from_dict(dict(reversed(list(a.to_dict().items()))))
    assert a.hash == b.hash
    assert len(a.hash) == 64
    changed = a.replace(discretisation=Discretisation("fbs", bin_width=10.0))
    assert changed.hash != a.hash
    assert len({PRESETS[n].hash for n in PRESET_NAMES}) == len(PRESET_NAMES)


def test_settings_are_frozen_and_hashable() -> None:
    settings = Settings.preset("ibsi1_config_E")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.distance = 2  # type: ignore[misc]
    assert {settings: 1}[Settings.preset("ibsi1_config_E")] == 1


def test_presets_say_what_ibsi_specifies() -> None:
    c = Settings.preset("ibsi1_config_C")
    assert c.resampling == Resampling(spacing=(2.0, 2.0, 2.0), order=1)
    assert c.resegmentation == Resegmentation(range=(-1000.0, 400.0))
    assert c.discretisation == Discretisation("fbs", bin_width=25.0)
    b = Settings.preset("ibsi1_config_B")
    assert b.resampling is not None and b.resampling.spacing == (None, 2.0, 2.0)
    assert set(b.aggregations) == {"2D_avg", "2D_comb", "2_5D_avg", "2_5D_comb"}
    e = Settings.preset("ibsi1_config_E")
    assert e.resampling is not None and e.resampling.order == 3
    assert e.resegmentation.outlier_sigma == 3.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: Settings(families=("glcm", "wavelets")),
        lambda: Settings(aggregations=("4D_avg",)),
        lambda: Discretisation("fbn"),
        lambda: Discretisation("fbs", bin_width=0.0),
        lambda: Settings.preset("ibsi1_config_Z"),
        lambda: Settings.from_dict({"colour": "blue"}),
    ],
)
def test_invalid_settings_are_refused(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]
