"""IBSI chapter 1 reference check: compute every configuration once, apply the IBSI pass rule.

Run ``python tests/features/ibsi_report.py`` for the pass count per family and configuration
as a markdown table (for the README). The test module ``test_ibsi_reference.py`` uses the same
functions, so the table and the tests cannot disagree.
"""

from __future__ import annotations

import math
import os
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from voxelhub.features.settings import FAMILIES as SETTINGS_FAMILIES

CONFIGS = ("dig_phantom", "A", "B", "C", "D", "E")
FAMILIES = ("diagnostics", *SETTINGS_FAMILIES)

# (config, tag) -> why it does not pass yet. Every entry becomes a strict xfail in the tests,
# so an entry that starts passing fails the suite until it is removed from here.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def ibsi_dir() -> Path:
    """``$VOXELHUB_SHARED/data/ibsi``, or ``../shared/data/ibsi`` next to the repository."""
    shared = os.environ.get("VOXELHUB_SHARED")
    root = Path(shared) if shared else Path(__file__).resolve().parents[2].parent / "shared"
    return root / "data" / "ibsi"


@cache
def reference() -> pd.DataFrame:
    """Reference rows with a consensus value (``no_consensus`` rows have none to check)."""
    table = pd.read_csv(ibsi_dir() / "ibsi1_reference_values.csv")
    return table[table["status"] == "reference"].reset_index(drop=True)


@cache
def phantom(kind: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    import SimpleITK as sitk

    folder = ibsi_dir() / ("digital_phantom" if kind == "dig_phantom" else "ct_phantom")
    image = sitk.ReadImage(str(folder / "phantom.nii.gz"))
    mask = sitk.ReadImage(str(folder / "mask.nii.gz"))
    sx, sy, sz = image.GetSpacing()
    return (
        sitk.GetArrayFromImage(image),
        sitk.GetArrayFromImage(mask),
        (float(sz), float(sy), float(sx)),
    )


@cache
def computed(config: str) -> dict[str, float]:
    """Every feature VoxelHub computes for one IBSI configuration, keyed by IBSI tag."""
    from voxelhub.features import Settings, extract

    name = "ibsi1_dig_phantom" if config == "dig_phantom" else f"ibsi1_config_{config}"
    image, mask, spacing = phantom("dig_phantom" if config == "dig_phantom" else "ct")
    table = extract(
        image,
        mask,
        Settings.preset(name),
        spacing=spacing,
        whole_image_diagnostics=config != "dig_phantom",
    )
    return dict(zip(table["ibsi_tag"], table["value"], strict=True))


def round3(x: float) -> float:
    """Round to 3 significant digits (the IBSI reporting precision)."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, 2 - math.floor(math.log10(abs(x))))


def passes(value: float, ref: float, tolerance: float) -> bool:
    """IBSI rule: value and reference at 3 significant digits, within the tolerance."""
    return abs(round3(value) - round3(ref)) <= tolerance + 1e-9 * max(1.0, abs(ref))


def results() -> pd.DataFrame:
    """One row per reference value with the computed value and whether it passes."""
    rows = []
    for row in reference().itertuples(index=False):
        value = computed(str(row.config)).get(str(row.tag), float("nan"))
        ok = math.isfinite(value) and passes(value, row.reference_value, row.tolerance)
        rows.append((row.config, row.family, row.tag, value, row.reference_value, ok))
    return pd.DataFrame(rows, columns=["config", "family", "tag", "value", "reference", "passed"])


def markdown_table(res: pd.DataFrame | None = None) -> str:
    """Pass count per family (rows) and configuration (columns), as markdown."""
    res = results() if res is None else res
    header = "| family | " + " | ".join(CONFIGS) + " |"
    lines = [header, "|---" * (len(CONFIGS) + 1) + "|"]
    for family in (*FAMILIES, "all"):
        sub = res if family == "all" else res[res["family"] == family]
        cells = []
        for config in CONFIGS:
            c = sub[sub["config"] == config]
            cells.append(f"{int(c['passed'].sum())}/{len(c)}" if len(c) else "–")
        name = f"**{family}**" if family == "all" else family
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    res = results()
    print(markdown_table(res))
    failed = res[~res["passed"]]
    if len(failed):
        print(f"\n{len(failed)} not passing:")
        print(failed.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
