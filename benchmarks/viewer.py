"""Slice viewer benchmark: time to first slice and per-slice latency in a real browser, against
the naive approach (load the whole series with SimpleITK, then slice the numpy array).

Run from the repository root::

    .venv/bin/python benchmarks/viewer.py            # 300 × 512² synthetic CT + the real phantom
    .venv/bin/python benchmarks/viewer.py --quick    # 60-slice synthetic case only (smoke test)

Needs Debian's ``/usr/bin/chromium`` (``make browser-deps``) and the widget requirements
(the project's pinned install).  Inputs: a synthetic 300 × 512 × 512 int16 CT
written as real DICOM by ``tests/dicom_factory.py`` (random noise) and, when present,
``ct_philips_ingenuity_phantom`` (140 × 512²) from ``$VOXELHUB_SHARED/data/dicom``.

VoxelHub side, measured in JupyterLab 4 + headless Chromium through the widget's own log
(``globalThis.__voxelhub_slice_log``, ``performance.now()`` in the page):

* ``first_slice_s``: from the widget's first slice request to the first slice drawn (the coarse
  level), and ``first_full_s`` to the full-resolution slice drawn, per plane, on a store the
  kernel has just opened (``voxelhub.open_series``: lazy, nothing read before the request);
* ``open_to_first_full_s``: from the notebook cell starting (imports excluded: they run in an
  earlier cell) to all three planes drawn at full resolution;
* per plane, ``slice_ms``: ``ArrowUp`` pressed → next full-resolution slice drawn (the kernel
  reads the slice from the OME-Zarr store, sends the raw int16 bytes, the browser maps the
  window and draws), one key at a time, median and p95 over ``--steps`` slices, and
  ``split_median_ms``: ``kernel`` (reading and cutting the slice, measured in the kernel and
  sent in the slice header; both levels when a preview was sent), ``message`` (the rest of
  request → slice bytes arrived in the page: comm, server, websocket, event loops) and
  ``draw`` (bytes arrived → drawn: lookup table, ``putImageData``, scaling, crosshair).

Naive side, in this process: ``sitk.ImageSeriesReader`` on the DICOM folder +
``GetArrayFromImage`` (time to first slice = whole-volume load), then numpy indexing per plane
(no drawing: it is a lower bound on what a notebook viewer built that way costs).

Writes ``benchmarks/results/viewer.json`` (``--quick`` writes into the work folder).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "widgets"))

from widgets_lab import CHROMIUM, CHROMIUM_ARGS, Guard, JupyterLab, open_and_run  # noqa: E402

SHARED = Path(os.environ.get("VOXELHUB_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "benchmarks" / "results" / "viewer.json"


def naive(folder: Path, steps: int) -> dict[str, Any]:
    import numpy as np
    import SimpleITK as sitk

    start = time.perf_counter()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    array = sitk.GetArrayFromImage(reader.Execute())
    first = array[array.shape[0] // 2].copy()
    load = time.perf_counter() - start
    planes = {}
    for axis, name in enumerate(("axial", "coronal", "sagittal")):
        times = []
        mid = array.shape[axis] // 2
        for i in range(steps):
            t = time.perf_counter()
            np.ascontiguousarray(np.take(array, mid + i, axis=axis))
            times.append((time.perf_counter() - t) * 1e3)
        planes[name] = {"median_ms": statistics.median(times), "p95_ms": _p95(times)}
    return {
        "first_slice_s": load,
        "shape": list(array.shape),
        "memory_mb": array.nbytes / 2**20,
        "slice_ms": planes,
        "checksum": float(first.mean()),
    }


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def browser_case(
    lab: JupyterLab, page: Any, store: Path, uid: str, steps: int, name: str
) -> dict[str, Any]:
    nb = lab.write_notebook(
        f"bench_{name}.ipynb",
        [
            "import time, voxelhub, voxelhub.widgets as vw\nfrom IPython.display import display",
            f"t0 = time.perf_counter()\ncat = voxelhub.open_catalog({str(store)!r})\n"
            f"v = vw.view({uid!r}, catalog=cat)\ndisplay(v)\n"
            "print('open_s', time.perf_counter() - t0)",
        ],
    )
    page.evaluate("() => { globalThis.__voxelhub_slice_log = []; }")
    open_and_run(page, lab, nb)
    page.wait_for_selector(".vh-slices canvas[data-axis='2'][data-level='0']", timeout=120_000)
    for axis in range(3):
        page.wait_for_selector(
            f".vh-slices canvas[data-axis='{axis}'][data-level='0']", timeout=60_000
        )
    log = page.evaluate("() => globalThis.__voxelhub_slice_log")
    first: dict[str, Any] = {}
    names = ("axial", "coronal", "sagittal")
    t_start = min(e["t"] for e in log if e["kind"] == "request")
    for axis, plane in enumerate(names):
        req = next(e for e in log if e["kind"] == "request" and e["axis"] == axis)
        drawn = [
            e for e in log if e["kind"] == "drawn" and e["axis"] == axis and e["seq"] == req["seq"]
        ]
        full = next(e for e in drawn if e["level"] == 0)
        first[plane] = {
            "first_slice_s": (drawn[0]["t"] - req["t"]) / 1e3,
            "first_level": drawn[0]["level"],
            "first_full_s": (full["t"] - req["t"]) / 1e3,
        }
    all_full = max(
        next(e["t"] for e in log if e["kind"] == "drawn" and e["axis"] == a and e["level"] == 0)
        for a in range(3)
    )
    planes = {}
    for axis, plane in enumerate(names):
        canvas = page.locator(f".vh-slices canvas[data-axis='{axis}']")
        canvas.focus()
        start_index = int(canvas.get_attribute("data-index") or 0)
        page.evaluate("() => { globalThis.__voxelhub_slice_log = []; }")
        for i in range(1, steps + 1):
            page.keyboard.press("ArrowUp")
            page.wait_for_selector(
                f".vh-slices canvas[data-axis='{axis}'][data-index='{start_index + i}'][data-level='0']",
                timeout=30_000,
            )
        log = page.evaluate("() => globalThis.__voxelhub_slice_log")
        times, coarse = [], []
        kernel, transit, draw = [], [], []
        for req in (e for e in log if e["kind"] == "request" and e["axis"] == axis):
            drawn = [e for e in log if e["kind"] == "drawn" and e["seq"] == req["seq"]]
            full = [e for e in drawn if e["level"] == 0]
            if full:
                times.append(full[0]["t"] - req["t"])
                recv = next(
                    e
                    for e in log
                    if e["kind"] == "recv" and e["seq"] == req["seq"] and e["level"] == 0
                )
                sent = [e for e in log if e["kind"] == "recv" and e["seq"] == req["seq"]]
                k_ms = sum(float(e.get("kernel_ms") or 0.0) for e in sent)
                kernel.append(k_ms)
                transit.append(recv["t"] - req["t"] - k_ms)
                draw.append(full[0]["t"] - recv["t"])
            if drawn:
                coarse.append(drawn[0]["t"] - req["t"])
        planes[plane] = {
            "median_ms": statistics.median(times),
            "p95_ms": _p95(times),
            "first_draw_median_ms": statistics.median(coarse),
            "split_median_ms": {
                "kernel": statistics.median(kernel),
                "message": statistics.median(transit),
                "draw": statistics.median(draw),
            },
            "n": len(times),
        }
    return {
        "first": first,
        "all_planes_full_s": (all_full - t_start) / 1e3,
        "slice_ms": planes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="60-slice synthetic case only")
    parser.add_argument("--steps", type=int, default=30, help="slices scrolled per plane")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "viewer")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    import voxelhub
    from tests.dicom_factory import write_series

    work = args.work / ("quick" if args.quick else "full")
    slices = 60 if args.quick else 300
    synthetic = work / "dicom_synthetic"
    if not synthetic.is_dir():
        write_series(
            synthetic,
            slices=slices,
            rows=512,
            columns=512,
            pixel_spacing=(0.7, 0.7),
            slice_step=1.0,
        )
    cases = {"synthetic_ct": synthetic}
    phantom = SHARED / "data" / "dicom" / "ct_philips_ingenuity_phantom"
    if phantom.is_dir() and not args.quick:
        cases["real_ct_phantom"] = phantom
    root = work / "lab"
    root.mkdir(parents=True, exist_ok=True)
    store = root / "store"
    uids = {}
    for name, folder in cases.items():
        report = voxelhub.ingest(folder, store, project=name, progress=False)
        assert not report.failed, report.summary()
        frame = voxelhub.open_catalog(store).series(project=name)
        uids[name] = frame["volume_uid"].iloc[0]

    results: dict[str, Any] = {
        "benchmark": "viewer",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "browser": CHROMIUM,
        },
        "targets": {"first_slice_s": 0.5, "slice_ms": 50},
        "cases": {},
    }
    lab = JupyterLab(root).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for name, folder in cases.items():
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                guard = Guard(lab.base)
                guard.attach(page)
                shape = voxelhub.open_series(uids[name], catalog=voxelhub.open_catalog(store)).shape
                results["cases"][name] = {
                    "shape": list(shape),
                    "voxelhub_browser": browser_case(
                        lab, page, store, uids[name], args.steps, name
                    ),
                    "naive_simpleitk": naive(folder, args.steps),
                }
                guard.check()
                page.close()
            browser.close()
    finally:
        lab.stop()

    out = work / "viewer.json" if args.quick else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"{'case':18} {'plane':9} {'VH first(s)':>11} {'VH full(s)':>10} {'VH ms/slice':>11} "
        f"{'p95':>6} {'SITK first(s)':>13} {'SITK ms/slice':>13}"
    )
    for name, case in results["cases"].items():
        vh, sitk_ = case["voxelhub_browser"], case["naive_simpleitk"]
        for plane in ("axial", "coronal", "sagittal"):
            print(
                f"{name:18} {plane:9} {vh['first'][plane]['first_slice_s']:11.3f} "
                f"{vh['first'][plane]['first_full_s']:10.3f} {vh['slice_ms'][plane]['median_ms']:11.1f} "
                f"{vh['slice_ms'][plane]['p95_ms']:6.1f} {sitk_['first_slice_s']:13.3f} "
                f"{sitk_['slice_ms'][plane]['median_ms']:13.3f}"
            )
    print(f"results: {out}")


if __name__ == "__main__":
    main()
