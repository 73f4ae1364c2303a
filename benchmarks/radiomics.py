"""Radiomics benchmark: VoxelHub feature extraction against pyradiomics on the same cases.

Run from the repository root::

    .venv/bin/python benchmarks/radiomics.py                      # 4 cases, 512² x 300
    .venv/bin/python benchmarks/radiomics.py --quick              # 1 small case (smoke test)
    .venv/bin/python benchmarks/radiomics.py --pyradiomics-python /opt/pyrad/bin/python

Cases follow ``../shared/notes/radiomics.md`` section 5: a synthetic 512×512×300 int16 CT
(0.78×0.78×1.25 mm) with a lobulated ~100k-voxel lesion, seeded, generated here. Each case is
written twice: as NRRD (what pyradiomics reads) and as a Zarr array chunked like the store
(z-shards of whole slices), which VoxelHub opens lazily with dask, the way ``open_series``
returns volumes. Every measurement runs in a fresh subprocess, so peak RSS is that tool's own.

Measured per case: VoxelHub end to end from the chunked store; VoxelHub on the pre-cropped
ROI (features only); and, when ``--pyradiomics-python`` names an interpreter with
``pyradiomics-bhklab==3.1.4`` (it does not install into our venv: no wheels for 3.11), its
``execute()`` at defaults and with ``additionalInfo=False``. Settings on both sides: no
resampling, bin width 25 HU, 3D, families firstorder/shape/glcm/glrlm/glszm/ngtdm/gldm
(NGLDM alpha 0). Results go to ``benchmarks/results/radiomics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "radiomics.json"
SPACING = (1.25, 0.78, 0.78)  # z, y, x in mm

VOXELHUB_SCRIPT = r"""
import json, os, sys, time
import numpy as np
t0 = time.perf_counter()
import dask.array as da, xarray as xr, zarr
from voxelhub.features import Discretisation, Settings, extract
path, mode = sys.argv[1], sys.argv[2]
settings = Settings(
    discretisation=Discretisation("fbs", bin_width=25.0),
    aggregations=("3D_avg",),
    families=("morphology", "intensity_statistics", "intensity_histogram", "glcm", "glrlm",
              "glszm", "ngtdm", "ngldm"),
)
spacing = json.loads(sys.argv[3])
def lazy(name):
    arr = zarr.open_array(os.path.join(path, name), mode="r")
    return xr.DataArray(da.from_zarr(arr), dims=("z", "y", "x"), attrs={"spacing_zyx": spacing})
t1 = time.perf_counter()
if mode == "store":
    table = extract(lazy("image"), lazy("mask"), settings)
else:  # features only, on the ROI bounding box + 5 voxels already in memory
    image = np.load(os.path.join(path, "crop_image.npy"))
    mask = np.load(os.path.join(path, "crop_mask.npy"))
    t1 = time.perf_counter()
    table = extract(image, mask, settings, spacing=spacing)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "extract_s": t2 - t1, "n_features": int(len(table))}))
"""

PYRAD_SCRIPT = r"""
import json, logging, sys, time
import SimpleITK as sitk, radiomics
from radiomics import featureextractor
radiomics.setVerbosity(logging.ERROR)
prefix, tuned = sys.argv[1], sys.argv[2] == "1"
kw = {"additionalInfo": False} if tuned else {}
ext = featureextractor.RadiomicsFeatureExtractor(binWidth=25, gldm_a=0, **kw)
ext.disableAllFeatures()
for c in ("firstorder", "shape", "glcm", "glrlm", "glszm", "ngtdm", "gldm"):
    ext.enableFeatureClassByName(c)
image, mask = sitk.ReadImage(prefix + "_img.nrrd"), sitk.ReadImage(prefix + "_mask.nrrd")
t0 = time.perf_counter()
result = ext.execute(image, mask)
t1 = time.perf_counter()
print(json.dumps({"extract_s": t1 - t0, "n_features": sum(k.startswith("original_") for k in result),
                  "version": radiomics.__version__}))
"""


def make_case(seed: int, shape: tuple[int, int, int], radius: float) -> tuple[Any, Any]:
    """Synthetic chest CT with a lobulated, textured lesion (protocol of the radiomics note)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    y, x = np.ogrid[:ny, :nx]
    cy, cx = ny / 2, nx / 2
    plane = np.full((ny, nx), -1000.0, np.float32)
    plane[((x - cx) / (0.43 * nx)) ** 2 + ((y - cy) / (0.31 * ny)) ** 2 <= 1] = 40
    for sx in (-1, 1):
        lung = ((x - cx - sx * 0.17 * nx) / (0.14 * nx)) ** 2 + ((y - cy) / (0.2 * ny)) ** 2 <= 1
        plane[lung] = -820
    vol = plane[None] + rng.normal(0, 25, size=shape).astype(np.float32)
    half = int(radius * 1.4)
    c = (nz // 2 + rng.integers(-5, 5), int(cy) + rng.integers(-5, 5), int(cx - 0.17 * nx))
    zz, yy, xx = np.mgrid[-half:half, -half:half, -half:half]
    r = np.sqrt(zz**2 + yy**2 + xx**2) + 1e-6
    theta, phi = np.arccos(zz / r), np.arctan2(yy, xx)
    lobes = 1 + 0.08 * np.sin(3 * theta + rng.uniform(0, 6)) * np.cos(2 * phi + rng.uniform(0, 6))
    lesion = r <= radius * lobes
    box = tuple(slice(ci - half, ci + half) for ci in c)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, lesion.shape).astype(np.float32), 2.0)
    sub = vol[box]
    sub[lesion] = 35 + (texture / texture.std() * 60)[lesion] + rng.normal(0, 15, lesion.sum())
    mask = np.zeros(shape, np.uint8)
    mask[box] = lesion
    return np.clip(np.rint(vol), -1024, 3071).astype(np.int16), mask


def write_case(folder: Path, image: Any, mask: Any) -> None:
    """NRRD for pyradiomics, Zarr (store-like chunks) and the pre-cropped ROI for VoxelHub."""
    import SimpleITK as sitk
    import zarr

    sitk_img = sitk.GetImageFromArray(image)
    sitk_img.SetSpacing(SPACING[::-1])
    sitk_mask = sitk.GetImageFromArray(mask)
    sitk_mask.CopyInformation(sitk_img)
    sitk.WriteImage(sitk_img, str(folder / "case_img.nrrd"), useCompression=False)
    sitk.WriteImage(sitk_mask, str(folder / "case_mask.nrrd"), useCompression=False)
    for name, arr in (("image", image), ("mask", mask)):
        z = zarr.create_array(
            folder / name, shape=arr.shape, chunks=(16, *arr.shape[1:]), dtype=arr.dtype
        )
        z[:] = arr
    idx = np.nonzero(mask)
    crop = tuple(
        slice(max(0, int(i.min()) - 5), min(n, int(i.max()) + 6))
        for i, n in zip(idx, mask.shape, strict=True)
    )
    np.save(folder / "crop_image.npy", image[crop])
    np.save(folder / "crop_mask.npy", mask[crop])


# On Linux a child's ru_maxrss starts at its parent's RSS at fork time, and the benchmark holds
# whole cases in memory; a tiny launcher in between keeps the tool's peak its own.
LAUNCHER = r"""
import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
out, err = proc.stdout.read(), proc.stderr.read()
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"out": out, "err": err, "status": status, "maxrss_kib": usage.ru_maxrss}))
"""


def run(cmd: list[str]) -> dict[str, Any]:
    """A fresh process; its last stdout line is a JSON record. Wall time includes start-up."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *cmd], capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - start
    launched = json.loads(proc.stdout)
    if launched["status"] != 0:
        return {"error": launched["err"].strip().splitlines()[-1:] or ["failed"], "wall_s": wall}
    record: dict[str, Any] = json.loads(launched["out"].strip().splitlines()[-1])
    record["wall_s"] = wall
    record["maxrss_mib"] = launched["maxrss_kib"] / 1024
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="one 128² x 80 case")
    parser.add_argument("--pyradiomics-python", help="interpreter with pyradiomics-bhklab")
    args = parser.parse_args()
    shape, radius, n = (
        ((80, 128, 128), 10.0, 1) if args.quick else ((300, 512, 512), 28.6, args.cases)
    )
    tools: dict[str, list[str]] = {
        "voxelhub (from chunked store)": [sys.executable, "-c", VOXELHUB_SCRIPT, "{dir}", "store"],
        "voxelhub (pre-cropped ROI)": [sys.executable, "-c", VOXELHUB_SCRIPT, "{dir}", "crop"],
    }
    if args.pyradiomics_python:
        for label, tuned in (("defaults", "0"), ("additionalInfo=False", "1")):
            tools[f"pyradiomics ({label})"] = [
                args.pyradiomics_python,
                "-c",
                PYRAD_SCRIPT,
                "{dir}/case",
                tuned,
            ]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in tools}
    with tempfile.TemporaryDirectory(prefix="voxelhub-radiomics-") as tmp:
        for i in range(n):
            folder = Path(tmp) / f"case{i:02d}"
            folder.mkdir()
            image, mask = make_case(1000 + i, shape, radius)
            write_case(folder, image, mask)
            print(f"case {i}: {int(mask.sum())} ROI voxels", flush=True)
            del image, mask
            for name, template in tools.items():
                cmd = [a.replace("{dir}", str(folder)) for a in template]
                if "voxelhub" in name:
                    cmd.append(json.dumps(SPACING))
                record = run(cmd)
                results[name].append(record)
                print(f"  {name}: {record}", flush=True)
    summary = {
        name: {
            "median_extract_s": statistics.median(r["extract_s"] for r in recs if "extract_s" in r)
            if any("extract_s" in r for r in recs)
            else None,
            "max_rss_mib": max((r.get("maxrss_mib", 0.0) for r in recs), default=0.0),
            "runs": recs,
        }
        for name, recs in results.items()
    }
    print("\n| tool | median extract s/case | peak RSS MiB |\n|---|---|---|")
    for name, s in summary.items():
        med = "failed" if s["median_extract_s"] is None else f"{s['median_extract_s']:.2f}"
        print(f"| {name} | {med} | {s['max_rss_mib']:.0f} |")
    if not args.pyradiomics_python:
        print("\npyradiomics not measured: pass --pyradiomics-python (pyradiomics-bhklab==3.1.4).")
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "case": {"shape_zyx": shape, "spacing_zyx": SPACING, "cases": n},
        "tools": summary,
    }
    if not args.quick:
        RESULTS.write_text(json.dumps(out, indent=2) + "\n")
        print(f"written {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
