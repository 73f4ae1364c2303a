"""Widgets in a real browser: JupyterLab 4 + Debian's Chromium driven by Playwright, offline.

One JupyterLab server for the module (started here on a free loopback port, stopped by PID);
each test runs its own notebook in a fresh workspace against a store ingested from
``../shared/data/dicom``, asserts from screenshots, and checks the page made no request to any
host but the local server and logged no console error.  Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from widgets_lab import (
    CHROMIUM,
    CHROMIUM_ARGS,
    Guard,
    JupyterLab,
    changed_fraction,
    open_and_run,
    picture_stats,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason="needs Debian chromium: make browser-deps"
    ),
]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts" / "widgets"
SERIES = ("ct_philips_ingenuity_phantom", "mr_ge_mprage_3d_t1")


@pytest.fixture(scope="module")
def lab_store(tmp_path_factory: pytest.TempPathFactory, shared_dicom: Path) -> dict[str, Any]:
    from voxelhub import ingest, open_catalog

    root = tmp_path_factory.mktemp("lab") / "root"
    root.mkdir()
    store = root / "store"
    report = ingest([shared_dicom / s for s in SERIES], store, project="browser", progress=False)
    assert not report.failed, report.summary()
    frame = open_catalog(store).series()
    ct = frame.loc[frame["modality"] == "CT", "volume_uid"].iloc[0]
    mr = frame.loc[frame["modality"] == "MR", "volume_uid"].iloc[0]
    return {"root": root, "store": str(store), "ct": ct, "mr": mr}


@pytest.fixture(scope="module")
def lab(lab_store: dict[str, Any]) -> Iterator[JupyterLab]:
    server = JupyterLab(lab_store["root"]).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, lab: JupyterLab) -> Iterator[tuple[Any, Guard]]:
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    pg = context.new_page()
    guard = Guard(lab.base)
    guard.attach(pg)
    try:
        yield pg, guard
    finally:
        context.close()


def _shot(locator: Any, name: str) -> bytes:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png: bytes = locator.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    return png


def _final(page: Any, canvas: str, index: int | None = None, timeout: int = 30_000) -> None:
    """Wait until ``canvas`` shows a full-resolution slice (at ``index`` if given)."""
    cond = "c.dataset.level === '0'" + (
        f" && c.dataset.index === '{index}'" if index is not None else ""
    )
    page.wait_for_function(
        f"() => {{ const c = document.querySelector({canvas!r}); return !!c && {cond}; }}",
        timeout=timeout,
    )


def test_browser_and_slice_viewer(
    page: tuple[Any, Guard], lab: JupyterLab, lab_store: dict[str, Any]
) -> None:
    pg, guard = page
    nb = lab.write_notebook(
        "browse.ipynb",
        [
            "import voxelhub, voxelhub.widgets as vw\n"
            f"cat = voxelhub.open_catalog({lab_store['store']!r})\n"
            "b = vw.browse(cat)\nb",
        ],
    )
    open_and_run(pg, lab, nb)
    table = pg.locator(".voxelhub-browser .vh-table")
    table.locator("tr.vh-row").first.wait_for(timeout=60_000)
    assert table.locator("tr.vh-row").count() == 2
    thumbs = pg.locator(".voxelhub-browser .vh-thumb img")
    assert thumbs.count() == 2
    assert pg.locator(".voxelhub-browser .vh-thumb img").first.evaluate(
        "i => i.complete && i.naturalWidth > 0"
    )

    # selecting a series (a click on its row) opens the slice viewer next to the table
    table.locator(f"tr.vh-row[data-key='{lab_store['ct']}']").click()
    axial = ".voxelhub-browser .vh-slices canvas[data-axis='0']"
    pg.wait_for_selector(axial, timeout=30_000)
    for axis in range(3):
        _final(pg, f".voxelhub-browser .vh-slices canvas[data-axis='{axis}']")
    time.sleep(0.3)
    _shot(pg.locator(".voxelhub-browser"), "browser_with_viewer")
    canvas = pg.locator(axial)
    first = _shot(canvas, "slice_axial_start")
    levels, spread = picture_stats(first)
    assert levels > 30 and spread > 100, (levels, spread)
    start = int(canvas.get_attribute("data-index") or -1)

    # keyboard: five slices up
    canvas.focus()
    for _ in range(5):
        pg.keyboard.press("ArrowUp")
    _final(pg, axial, start + 5)
    time.sleep(0.2)
    scrolled = _shot(canvas, "slice_axial_scrolled")
    assert changed_fraction(first, scrolled) > 0.01
    label = pg.locator(".voxelhub-browser .vh-plane-label").first.inner_text()
    assert label.startswith(f"axial {start + 6}/"), label

    # mouse wheel on the coronal plane
    coronal = pg.locator(".voxelhub-browser .vh-slices canvas[data-axis='1']")
    before_c = int(coronal.get_attribute("data-index") or -1)
    coronal.hover()
    pg.mouse.wheel(0, -100)
    _final(pg, ".voxelhub-browser .vh-slices canvas[data-axis='1']", before_c + 1)

    # window/level by right-drag on the axial plane
    wl_before = pg.locator(".voxelhub-browser .vh-wl").inner_text()
    box = canvas.bounding_box()
    assert box is not None
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    pg.mouse.move(cx, cy)
    pg.mouse.down(button="right")
    pg.mouse.move(cx - 120, cy + 60, steps=6)
    pg.mouse.up(button="right")
    time.sleep(0.3)
    windowed = _shot(canvas, "slice_axial_windowed")
    assert pg.locator(".voxelhub-browser .vh-wl").inner_text() != wl_before
    assert changed_fraction(scrolled, windowed) > 0.05
    levels, spread = picture_stats(windowed)
    assert levels > 10 and spread > 50

    # a preset from the menu
    pg.locator(".voxelhub-browser select.vh-preset").select_option("lung")
    time.sleep(0.3)
    lung = _shot(canvas, "slice_axial_lung")
    assert changed_fraction(windowed, lung) > 0.05

    # the pointer readout: LPS mm and the voxel value
    pg.mouse.move(cx + 10, cy + 10)
    readout = pg.locator(".voxelhub-browser .vh-readout").inner_text()
    assert "LPS" in readout and "mm" in readout and "HU" in readout, readout
    guard.check()


def test_volume_viewer_renders(
    page: tuple[Any, Guard], lab: JupyterLab, lab_store: dict[str, Any]
) -> None:
    pg, guard = page
    nb = lab.write_notebook(
        "view3d.ipynb",
        [
            "import numpy as np, voxelhub, voxelhub.widgets as vw\n"
            f"cat = voxelhub.open_catalog({lab_store['store']!r})\n"
            f"vol = voxelhub.open_series({lab_store['ct']!r}, catalog=cat)\n"
            "v = vw.view3d(vol, mask=(vol > 300), catalog=cat, max_voxels=2_000_000)\nv",
        ],
    )
    open_and_run(pg, lab, nb)
    canvas = pg.locator(".voxelhub-volume3d canvas").first
    canvas.wait_for(timeout=60_000)
    time.sleep(8)  # WebGL on SwiftShader
    png = _shot(pg.locator(".voxelhub-volume3d"), "volume3d")
    levels, spread = picture_stats(_shot(canvas, "volume3d_canvas"))
    assert levels > 30 and spread > 100, (levels, spread)
    assert png
    guard.check()


def test_feature_panel_two_series(
    page: tuple[Any, Guard], lab: JupyterLab, lab_store: dict[str, Any]
) -> None:
    pg, guard = page
    nb = lab.write_notebook(
        "features.ipynb",
        [
            "import voxelhub, voxelhub.widgets as vw\n"
            f"cat = voxelhub.open_catalog({lab_store['store']!r})\n"
            f"p = vw.features_panel(cat, series=[{lab_store['ct']!r}, {lab_store['mr']!r}])\n"
            "p.level.value = 2\np.lower.value = 100\np",
        ],
    )
    open_and_run(pg, lab, nb)
    panel = pg.locator(".voxelhub-features")
    panel.wait_for(timeout=60_000)
    panel.get_by_role("button", name="Run").click()
    rows = panel.locator(".vh-table tr.vh-row")
    rows.nth(1).wait_for(timeout=120_000)
    assert rows.count() == 2
    headers = panel.locator(".vh-table th")
    assert headers.count() > 3
    # sort by the second column, descending after two clicks
    headers.nth(1).click()
    pg.wait_for_function(
        "() => document.querySelector('.voxelhub-features .vh-table th:nth-child(2)').textContent.includes('▲')"
    )
    assert panel.locator("svg.vh-plot circle").count() == 2
    _shot(panel, "feature_panel")
    assert "2 of 2 series done, 0 failed" in panel.inner_text()
    guard.check()
