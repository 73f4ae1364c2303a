"""Radiomics benchmark: VoxelHub feature extraction against pyradiomics on the same cases.

Run from the repository root::

    .venv/bin/python benchmarks/radiomics.py                      # 2 timed cases + 16-case cohort
    .venv/bin/python benchmarks/radiomics.py --quick              # small cases (smoke test)
    .venv/bin/python benchmarks/radiomics.py --pyradiomics-python /opt/pyrad/bin/python
    .venv/bin/python benchmarks/radiomics.py --no-pyradiomics     # VoxelHub only
    .venv/bin/python benchmarks/radiomics.py --real-only          # the real-CT case alone

Cases follow ``../shared/notes/radiomics.md`` section 5: a synthetic 512×512×300 int16 CT
(0.78×0.78×1.25 mm) with a lobulated ~100k-voxel lesion, seeded, generated here. Each case is
written as NRRD (what pyradiomics reads), as a Zarr array chunked like the store (z-slabs of
16 whole slices), which VoxelHub opens lazily with dask the way ``open_series`` returns
volumes, and as its ROI bounding box + 5 voxels (NRRD and npy) for the feature-only timings.
Every per-case measurement runs in a fresh subprocess, so peak RSS is that tool's own.

The real-CT case is the 140×512² Philips Ingenuity head phantom of
``../shared/data/dicom/ct_philips_ingenuity_phantom`` (``$VOXELHUB_SHARED`` overrides
``../shared``), ingested into a temporary store with ``voxelhub.ingest``; VoxelHub reads it back
with ``open_series``. Its ROI is deterministic: a 16 mm-radius sphere centred on the voxel
deepest inside soft tissue (-100…200 HU), intersected with that HU range. pyradiomics gets the
image and mask as NRRD with the volume's own geometry (``volume.vh.to_simpleitk()``).
``--real-only`` runs just this case and merges it into the results file under ``real_ct``.

pyradiomics is ``pyradiomics-bhklab==3.1.4`` (plain ``pyradiomics`` has no wheels for Python
3.11) in its own venv, ``benchmarks/work/pyrad-venv``, which this script creates when missing
(it compiles C extensions, so it needs gcc and about a minute).

Settings on both sides: pyradiomics defaults (no resampling, bin width 25 HU with edges at
multiples of 25, 3D, GLCM/GLRLM averaged over directions) with NGLDM/GLDM alpha 0; VoxelHub
runs ``Settings.preset("pyradiomics_default")`` (``compat="pyradiomics"``), so both compute the
same numbers; families firstorder, shape, glcm, glrlm, glszm, ngtdm, gldm.

Measured:

* per case: VoxelHub from the chunked store and on the pre-cropped ROI; pyradiomics
  ``execute()`` at its defaults, with ``additionalInfo=False`` (no diagnostics), and on the
  pre-cropped ROI. Time is the tool's own extraction call; peak RSS is the process's.
* cohort: 16 cases with ``extract_many`` on a ``LocalCluster`` of 1 and of 2 single-threaded
  worker processes (scaling efficiency = t1 / (2 t2)), against pyradiomics' batch mode
  (``pyradiomics cases.csv --jobs 2``) at its defaults.

Results go to ``benchmarks/results/radiomics.json`` and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
PYRAD_VENV = REPO / "benchmarks" / "work" / "pyrad-venv"
PYRAD_PACKAGE = "pyradiomics-bhklab==3.1.4"
SPACING = (1.25, 0.78, 0.78)  # z, y, x in mm
CLASSES = ("firstorder", "shape", "glcm", "glrlm", "glszm", "ngtdm", "gldm")

VOXELHUB_SCRIPT = r"""
import json, os, sys, time
import numpy as np
import dask.array as da, xarray as xr, zarr
from voxelhub.features import Settings, extract
path, mode, spacing = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
settings = Settings.preset("pyradiomics_default")
def lazy(name):
    arr = zarr.open_array(os.path.join(path, name), mode="r")
    return xr.DataArray(da.from_zarr(arr), dims=("z", "y", "x"), attrs={"spacing_zyx": spacing})
if mode == "store" and os.path.exists(os.path.join(path, "series.json")):  # real CT
    import voxelhub
    info = json.load(open(os.path.join(path, "series.json")))
    image = voxelhub.open_series(info["volume_uid"], catalog=voxelhub.open_catalog(info["store"]))
    t0 = time.perf_counter()
    table = extract(image, lazy("mask"), settings)
elif mode == "store":
    t0 = time.perf_counter()
    table = extract(lazy("image"), lazy("mask"), settings)
else:  # features only, on the ROI bounding box + 5 voxels already in memory
    image = np.load(os.path.join(path, "crop_image.npy"))
    mask = np.load(os.path.join(path, "crop_mask.npy"))
    t0 = time.perf_counter()
    table = extract(image, mask, settings, spacing=spacing)
t1 = time.perf_counter()
values = {f: float(v) for f, v, fam in zip(table.feature, table.value, table.family)
          if fam != "diagnostics"}
with open(os.path.join(path, f"voxelhub_{mode}.json"), "w") as f:
    json.dump(values, f)
print(json.dumps({"extract_s": t1 - t0, "n_features": len(values)}))
"""

PYRAD_SCRIPT = r"""
import json, logging, os, sys, time
import SimpleITK as sitk, radiomics
from radiomics import featureextractor
radiomics.setVerbosity(logging.ERROR)
folder, mode = sys.argv[1], sys.argv[2]
kw = {"additionalInfo": False} if mode == "nodiag" else {}
ext = featureextractor.RadiomicsFeatureExtractor(binWidth=25, gldm_a=0, **kw)
ext.disableAllFeatures()
for c in sys.argv[3].split(","):
    ext.enableFeatureClassByName(c)
prefix = os.path.join(folder, "crop" if mode == "crop" else "case")
image, mask = sitk.ReadImage(prefix + "_img.nrrd"), sitk.ReadImage(prefix + "_mask.nrrd")
t0 = time.perf_counter()
result = ext.execute(image, mask)
t1 = time.perf_counter()
values = {k: float(v) for k, v in result.items() if k.startswith("original_")}
with open(os.path.join(folder, f"pyradiomics_{mode}.json"), "w") as f:
    json.dump(values, f)
print(json.dumps({"extract_s": t1 - t0, "n_features": len(values),
                  "version": radiomics.__version__}))
"""

COHORT_SCRIPT = r"""
import json, os, sys, time
import dask.array as da, xarray as xr, zarr
from distributed import Client, LocalCluster
from voxelhub.features import Settings, extract_many
folders, workers, spacing = json.loads(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
def lazy(path):
    arr = zarr.open_array(path, mode="r")
    return xr.DataArray(da.from_zarr(arr), dims=("z", "y", "x"), attrs={"spacing_zyx": spacing})
if __name__ == "__main__":
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    t1 = time.perf_counter()
    items = [(os.path.basename(f), lazy(os.path.join(f, "image")), lazy(os.path.join(f, "mask")))
             for f in folders]
    table = extract_many(items, settings=Settings.preset("pyradiomics_default"), client=client,
                         progress=False)
    t2 = time.perf_counter()
    rss = client.run(lambda: __import__("psutil").Process().memory_info().rss)
    client.close(); cluster.close()
    print(json.dumps({"startup_s": t1 - t0, "extract_s": t2 - t1,
                      "errors": int(table["error"].notna().sum()),
                      "worker_rss_mib": max(rss.values()) / 2**20}))
"""

PARAMS_YAML = """\
setting:
  binWidth: 25
  gldm_a: 0
  label: 1
featureClass:
""" + "".join(f"  {c}:\n" for c in CLASSES)


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
    """NRRD for pyradiomics, Zarr (store-like chunks) and the pre-cropped ROI for both."""
    import SimpleITK as sitk
    import zarr

    def nrrd(arr: Any, path: Path) -> None:
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(SPACING[::-1])
        sitk.WriteImage(img, str(path), useCompression=False)

    nrrd(image, folder / "case_img.nrrd")
    nrrd(mask, folder / "case_mask.nrrd")
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
    nrrd(image[crop], folder / "crop_img.nrrd")
    nrrd(mask[crop], folder / "crop_mask.nrrd")


REAL_SERIES = "ct_philips_ingenuity_phantom"
REAL_RADIUS_MM = 16.0
REAL_HU = (-100, 200)


def shared_dir() -> Path:
    return Path(os.environ.get("VOXELHUB_SHARED") or REPO.parent / "shared")


def make_real_case(folder: Path) -> dict[str, Any]:
    """Ingest the real CT into ``folder/store``; write its ROI and the NRRD/crop inputs."""
    import SimpleITK as sitk
    import zarr
    from scipy import ndimage

    import voxelhub

    source = shared_dir() / "data" / "dicom" / REAL_SERIES
    store = folder / "store"
    report = voxelhub.ingest(source, store, progress=False)
    cat = voxelhub.open_catalog(store)
    row = cat.series().iloc[0]
    volume = voxelhub.open_series(row, catalog=cat)
    spacing = [float(v) for v in volume.attrs["spacing_zyx"]]
    image = volume.values
    tissue = (image >= REAL_HU[0]) & (image <= REAL_HU[1])
    # padded so that the volume's border counts as outside: the centre lies within the scan
    depth = ndimage.distance_transform_edt(np.pad(tissue, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    centre = np.unravel_index(int(np.argmax(depth)), image.shape)
    zz, yy, xx = (
        (np.arange(n) - c) * s for n, c, s in zip(image.shape, centre, spacing, strict=True)
    )
    sphere = (zz[:, None, None] ** 2 + yy[None, :, None] ** 2 + xx[None, None, :] ** 2) <= (
        REAL_RADIUS_MM**2
    )
    mask = (sphere & tissue).astype(np.uint8)
    reference = volume.vh.to_simpleitk()

    def nrrd(arr: Any, path: Path, crop: tuple[slice, ...] | None = None) -> None:
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(reference)
        if crop is not None:  # sitk indexes x, y, z; keeps the physical origin of the crop
            img = img[crop[2], crop[1], crop[0]]
        sitk.WriteImage(img, str(path), useCompression=False)

    nrrd(image, folder / "case_img.nrrd")
    nrrd(mask, folder / "case_mask.nrrd")
    z = zarr.create_array(
        folder / "mask", shape=mask.shape, chunks=(16, *mask.shape[1:]), dtype=mask.dtype
    )
    z[:] = mask
    idx = np.nonzero(mask)
    crop = tuple(
        slice(max(0, int(i.min()) - 5), min(n, int(i.max()) + 6))
        for i, n in zip(idx, mask.shape, strict=True)
    )
    np.save(folder / "crop_image.npy", image[crop])
    np.save(folder / "crop_mask.npy", mask[crop])
    nrrd(image, folder / "crop_img.nrrd", crop)
    nrrd(mask, folder / "crop_mask.nrrd", crop)
    uid = str(row["volume_uid"])
    (folder / "series.json").write_text(json.dumps({"store": str(store), "volume_uid": uid}))
    return {
        "source": f"../shared/data/dicom/{REAL_SERIES}",
        "description": str(volume.attrs.get("description", "")),
        "shape_zyx": list(image.shape),
        "spacing_zyx": spacing,
        "frames_ingested": report.frames,
        "roi": (
            f"sphere r={REAL_RADIUS_MM:g} mm centred on the voxel deepest in "
            f"{REAL_HU[0]}..{REAL_HU[1]} HU, intersected with that range"
        ),
        "roi_centre_zyx": [int(c) for c in centre],
        "roi_voxels": int(mask.sum()),
    }


def run_real(pyrad: str | None, work: Path, repeats: int) -> dict[str, Any]:
    """The per-case comparison on the ingested real CT."""
    folder = work / "real_ct"
    folder.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    case = make_real_case(folder)
    case["prepare_s"] = time.perf_counter() - t0
    print(f"real CT: {case['roi_voxels']} ROI voxels at {case['roi_centre_zyx']}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    for name, template in tools_for(pyrad, json.dumps(case["spacing_zyx"])).items():
        results[name] = []
        for _ in range(repeats):
            record = run([a.replace("{dir}", str(folder)) for a in template])
            results[name].append(record)
            print(f"  {name}: {json.dumps(record)[:200]}", flush=True)
    return {
        "case": {**case, "repeats": repeats},
        "per_case": summarise(results),
        "agreement": agreement(folder),
    }


def tools_for(pyrad: str | None, sp: str) -> dict[str, list[str]]:
    """The per-case commands; ``{dir}`` stands for the case folder."""
    tools: dict[str, list[str]] = {
        "voxelhub (from chunked store)": [
            sys.executable,
            "-c",
            VOXELHUB_SCRIPT,
            "{dir}",
            "store",
            sp,
        ],
        "voxelhub (pre-cropped ROI)": [sys.executable, "-c", VOXELHUB_SCRIPT, "{dir}", "crop", sp],
    }
    if pyrad:
        for label, mode in (
            ("defaults", "default"),
            ("additionalInfo=False", "nodiag"),
            ("pre-cropped ROI", "crop"),
        ):
            tools[f"pyradiomics ({label})"] = [
                pyrad, "-c", PYRAD_SCRIPT, "{dir}", mode, ",".join(CLASSES)
            ]  # fmt: skip
    return tools


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        name: {
            "median_extract_s": median(recs, "extract_s"),
            "median_wall_s": median(recs, "wall_s"),
            "max_rss_mib": max((r.get("maxrss_mib", 0.0) for r in recs), default=0.0),
            "runs": recs,
        }
        for name, recs in results.items()
    }


# On Linux a child's ru_maxrss starts at its parent's RSS at fork time, and the benchmark holds
# whole cases in memory; a tiny launcher in between keeps the tool's peak its own. RUSAGE_CHILDREN
# reports the largest process of the tool's tree (pool workers included).
LAUNCHER = r"""
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"out": proc.stdout, "err": proc.stderr, "status": proc.returncode,
                  "maxrss_kib": maxrss}))
"""


def run(cmd: list[str], cwd: Path | None = None) -> dict[str, Any]:
    """A fresh process; its last stdout line is a JSON record. Wall time includes start-up."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO / "workspace")}
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *cmd],
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd,
        env=env,
    )
    wall = time.perf_counter() - start
    launched = json.loads(proc.stdout)
    record: dict[str, Any] = {"wall_s": wall, "maxrss_mib": launched["maxrss_kib"] / 1024}
    if launched["status"] != 0:
        record["error"] = (launched["err"].strip().splitlines() or ["failed"])[-1]
        return record
    lines = launched["out"].strip().splitlines()
    if lines and lines[-1].startswith("{"):
        record.update(json.loads(lines[-1]))
    return record


def ensure_pyradiomics(python: str | None) -> str | None:
    """The interpreter with pyradiomics: given, or the benchmark venv (created if missing)."""
    if python:
        return python
    exe = PYRAD_VENV / "bin" / "python"
    if not exe.exists():
        print(f"creating {PYRAD_VENV.relative_to(REPO)} with {PYRAD_PACKAGE} …", flush=True)
        base = shutil.which("python3", path="/usr/bin") or sys.executable
        try:
            subprocess.run([base, "-m", "venv", str(PYRAD_VENV)], check=True)
            subprocess.run([str(exe), "-m", "pip", "install", "-q", PYRAD_PACKAGE], check=True)
        except subprocess.CalledProcessError as exc:
            print(f"could not install pyradiomics ({exc}); measuring VoxelHub only")
            shutil.rmtree(PYRAD_VENV, ignore_errors=True)
            return None
    return str(exe)


def agreement(folder: Path) -> dict[str, Any]:
    """How many pyradiomics values VoxelHub (compat mode) reproduces on one case."""
    try:
        ours = json.loads((folder / "voxelhub_store.json").read_text())
        theirs = json.loads((folder / "pyradiomics_default.json").read_text())
    except FileNotFoundError:
        return {}
    common = sorted(set(ours) & set(theirs))
    rel = {
        k: abs(ours[k] - theirs[k]) / max(abs(theirs[k]), 1e-12)
        for k in common
        if np.isfinite(ours[k]) and np.isfinite(theirs[k])
    }
    worst = sorted(rel.items(), key=lambda kv: -kv[1])[:5]
    return {
        "compared": len(common),
        "within_1e-6": sum(v <= 1e-6 for v in rel.values()),
        "within_1e-3": sum(v <= 1e-3 for v in rel.values()),
        "pyradiomics_only": sorted(set(theirs) - set(ours)),
        "worst": worst,
    }


def median(records: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records if key in r]
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cases", type=int, default=2, help="cases timed one by one")
    parser.add_argument("--cohort", type=int, default=16, help="cases in the cohort run")
    parser.add_argument("--quick", action="store_true", help="128² x 80 cases, 4-case cohort")
    parser.add_argument("--pyradiomics-python", help="interpreter with pyradiomics-bhklab")
    parser.add_argument("--no-pyradiomics", action="store_true")
    parser.add_argument("--work", type=Path, help="where to write the cases (default: a temp dir)")
    parser.add_argument(
        "--real-only", action="store_true", help="only the real-CT case, merged into the results"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per tool on the real CT")
    args = parser.parse_args()
    if args.real_only:
        return main_real(args)
    shape, radius = ((80, 128, 128), 10.0) if args.quick else ((300, 512, 512), 28.6)
    n_cohort = 4 if args.quick else args.cohort
    pyrad = None if args.no_pyradiomics else ensure_pyradiomics(args.pyradiomics_python)
    sp = json.dumps(SPACING)
    tools = tools_for(pyrad, sp)
    work = args.work or Path(tempfile.mkdtemp(prefix="voxelhub-radiomics-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in tools}
    folders: list[Path] = []
    n_cases = max(args.cases, n_cohort)
    roi_voxels = []
    real = None
    try:
        if not args.quick:
            real = run_real(pyrad, work, args.repeats)
        for i in range(n_cases):
            folder = work / f"case{i:02d}"
            folder.mkdir(exist_ok=True)
            if not (folder / "crop_mask.nrrd").exists():
                image, mask = make_case(1000 + i, shape, radius)
                write_case(folder, image, mask)
                del image, mask
            folders.append(folder)
            roi_voxels.append(int(np.load(folder / "crop_mask.npy").astype(bool).sum()))
            print(f"case {i}: {roi_voxels[-1]} ROI voxels", flush=True)
            if i >= args.cases:
                continue
            for name, template in tools.items():
                record = run([a.replace("{dir}", str(folder)) for a in template])
                results[name].append(record)
                print(f"  {name}: {json.dumps(record)[:200]}", flush=True)
        match = agreement(folders[0])
        cohort: dict[str, Any] = {"cases": n_cohort}
        names = json.dumps([str(f) for f in folders[:n_cohort]])
        for workers in (1, 2):
            rec = run([sys.executable, "-c", COHORT_SCRIPT, names, str(workers), sp])
            cohort[f"voxelhub_{workers}_workers"] = rec
            print(f"cohort, VoxelHub {workers} worker(s): {rec}", flush=True)
        t1 = cohort["voxelhub_1_workers"].get("extract_s")
        t2 = cohort["voxelhub_2_workers"].get("extract_s")
        if t1 and t2:
            cohort["scaling_efficiency_1_to_2"] = t1 / (2 * t2)
        if pyrad:
            batch = work / "batch"
            batch.mkdir(exist_ok=True)
            (batch / "params.yaml").write_text(PARAMS_YAML)
            with open(batch / "cases.csv", "w") as f:
                f.write("Image,Mask\n")
                for folder in folders[:n_cohort]:
                    f.write(f"{folder / 'case_img.nrrd'},{folder / 'case_mask.nrrd'}\n")
            cli = str(Path(pyrad).parent / "pyradiomics")
            start = time.perf_counter()
            rec = run(
                [cli, "cases.csv", "-p", "params.yaml", "-j", "2", "-o", "out.csv", "-f", "csv"],
                cwd=batch,
            )
            rec["extract_s"] = time.perf_counter() - start
            cohort["pyradiomics_batch_2_jobs"] = rec
            print(f"cohort, pyradiomics batch --jobs 2: {rec}", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarise(results)
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "case": {
            "shape_zyx": shape,
            "spacing_zyx": SPACING,
            "cases": args.cases,
            "roi_voxels": roi_voxels,
        },
        "settings": "Settings.preset('pyradiomics_default') / pyradiomics binWidth=25, gldm_a=0",
        "per_case": summary,
        "cohort": cohort,
        "agreement_case0": match,
    }
    if real is not None:
        out["real_ct"] = real
    table = markdown(out)
    print("\n" + table)
    if real is not None:
        print("\n" + markdown_real(real))
    if not args.quick:
        RESULTS.write_text(json.dumps(out, indent=2) + "\n")
        print(f"written {RESULTS.relative_to(REPO)}")
    return 0


def main_real(args: argparse.Namespace) -> int:
    """``--real-only``: the real-CT case alone, merged into the results file as ``real_ct``."""
    pyrad = None if args.no_pyradiomics else ensure_pyradiomics(args.pyradiomics_python)
    work = args.work or Path(tempfile.mkdtemp(prefix="voxelhub-radiomics-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        real = run_real(pyrad, work, args.repeats)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    real["date"] = time.strftime("%Y-%m-%d")
    print("\n" + markdown_real(real))
    out = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    out["real_ct"] = real
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written {RESULTS.relative_to(REPO)} (real_ct)")
    return 0


def per_case_table(per_case: dict[str, Any]) -> list[str]:
    base = per_case.get("pyradiomics (defaults)", {}).get("median_extract_s")
    lines = [
        "| per case | median extraction s | process wall s | peak RSS MiB | vs pyradiomics defaults |",
        "|---|---|---|---|---|",
    ]
    for name, s in per_case.items():
        t = s["median_extract_s"]
        speed = f"{base / t:.1f}×" if base and t else "–"
        wall = s["median_wall_s"]
        lines.append(
            f"| {name} | {'failed' if t is None else f'{t:.2f}'} | "
            f"{'–' if wall is None else f'{wall:.1f}'} | {s['max_rss_mib']:.0f} | {speed} |"
        )
    return lines


def markdown_real(real: dict[str, Any]) -> str:
    """The real-CT case as a markdown table."""
    c = real["case"]
    lines = per_case_table(real["per_case"])
    m = real.get("agreement") or {}
    if m:
        lines.append(
            f"\nSame numbers (real CT, {c['roi_voxels']} ROI voxels): {m['within_1e-6']}/"
            f"{m['compared']} pyradiomics features within 1e-6 relative, {m['within_1e-3']}/"
            f"{m['compared']} within 1e-3."
        )
    return "\n".join(lines)


def markdown(out: dict[str, Any]) -> str:
    """The results as the README's markdown tables."""
    lines = per_case_table(out["per_case"])
    c = out["cohort"]
    lines += [
        "",
        f"| cohort of {c['cases']} cases | wall s | RSS MiB (VoxelHub: a worker at the end; pyradiomics: peak) |",
        "|---|---|---|",
    ]
    for key, label in (
        ("voxelhub_1_workers", "VoxelHub `extract_many`, LocalCluster 1 worker"),
        ("voxelhub_2_workers", "VoxelHub `extract_many`, LocalCluster 2 workers"),
        ("pyradiomics_batch_2_jobs", "pyradiomics batch `--jobs 2` (defaults)"),
    ):
        if key in c:
            rec = c[key]
            rss = rec.get("worker_rss_mib", rec.get("maxrss_mib", 0.0))
            t = rec.get("extract_s")
            lines.append(f"| {label} | {'failed' if t is None else f'{t:.1f}'} | {rss:.0f} |")
    if "scaling_efficiency_1_to_2" in c:
        lines.append(
            f"\nScaling 1 → 2 workers: {100 * c['scaling_efficiency_1_to_2']:.0f} % efficient."
        )
    m = out.get("agreement_case0") or {}
    if m:
        lines.append(
            f"\nSame numbers (case 0): {m['within_1e-6']}/{m['compared']} pyradiomics features "
            f"within 1e-6 relative, {m['within_1e-3']}/{m['compared']} within 1e-3."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
