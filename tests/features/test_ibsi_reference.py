"""Every IBSI chapter 1 reference value (digital phantom, CT phantom configs A–E), one test
each, with the IBSI pass rule. Not-yet-passing values are strict xfails listed in
``ibsi_report.KNOWN_FAILURES``; nothing is skipped."""

from __future__ import annotations

import math

import pytest
from ibsi_report import KNOWN_FAILURES, computed, passes, reference


def _params() -> list[object]:
    params = []
    for row in reference().itertuples(index=False):
        key = (str(row.config), str(row.tag))
        marks = []
        if key in KNOWN_FAILURES:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[key]))
        params.append(
            pytest.param(
                *key,
                float(row.reference_value),
                float(row.tolerance),
                id=f"{key[0]}-{key[1]}",
                marks=marks,
            )
        )
    return params


@pytest.mark.parametrize(("config", "tag", "ref", "tolerance"), _params())
def test_ibsi_reference_value(config: str, tag: str, ref: float, tolerance: float) -> None:
    values = computed(config)
    assert tag in values, f"{tag} is not computed for config {config}"
    value = values[tag]
    assert math.isfinite(value), f"{tag} = {value}"
    assert passes(value, ref, tolerance), f"{tag}: {value:.6g} vs {ref} ± {tolerance}"


def test_known_failures_are_real_rows() -> None:
    """The xfail list names only (config, tag) pairs that exist in the reference table."""
    rows = {(str(r.config), str(r.tag)) for r in reference().itertuples(index=False)}
    assert set(KNOWN_FAILURES) <= rows
