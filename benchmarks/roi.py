"""ROI import benchmark: RTSTRUCT and SEG onto the 140-slice CT, against rt-utils and highdicom.

Run from the repository root::

    .venv/bin/python benchmarks/roi.py                 # 3 timed runs per tool (about 3 min)
    .venv/bin/python benchmarks/roi.py --repeat 5
    .venv/bin/python benchmarks/roi.py --markdown      # print the README table from the JSON

Input: ``../shared/data/dicom/ct_philips_ingenuity_phantom`` (140 x 512 x 512, Philips
Ingenuity; ``$VOXELHUB_SHARED`` replaces ``../shared``), ingested once into
``benchmarks/work/roi/store``.  Two dense ROIs are made from its HU values: ``body`` (> -300 HU,
the phantom) and ``dense`` (> 150 HU, inside it), so they overlap.

* **RTSTRUCT** written by rt-utils (``RTStructBuilder.add_roi(..., approximate_contours=False)``:
  contours traced through every boundary pixel centre, the case the issue measured), read back
  by rt-utils (``create_from`` + ``get_roi_mask_by_name``, which reads the 140 images) and by
  VoxelHub (``import_rtstruct``, both boundary rules).  Inside VoxelHub's process the parse and
  the fill are also timed apart, next to the fill the previous version used
  (``skimage.draw.polygon`` per contour, XOR-combined) on the same parsed contours.
* **SEG** written by highdicom from the same two masks (BINARY, overlapping segments), read by
  highdicom (``segread`` + ``get_volume(combine_segments=False)``) and by VoxelHub
  (``import_seg``, one mask per segment since they overlap).

Every timed run is a fresh process (``--repeat`` of each, median reported): the time of the
import call itself and the whole process (imports included).  Agreement: Dice of each VoxelHub
mask against rt-utils' for the same ROI, and VoxelHub's SEG masks against the masks the SEG was
written from (must be exact).

rt-utils (``rt-utils==1.2.7``, with opencv) is not a VoxelHub dependency: it lives in its own
venv, ``.venv-rtutils`` (``make rtutils``, pinned in ``requirements/rtutils.txt``), which the ROI
tests use too.  Results go to ``benchmarks/results/roi.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "roi.json"
WORK = REPO / "benchmarks" / "work" / "roi"
RTUTILS_VENV = REPO / ".venv-rtutils"  # `make rtutils`: requirements/rtutils.txt
SHARED = Path(os.environ.get("VOXELHUB_SHARED", REPO.parent / "shared"))
SERIES = SHARED / "data" / "dicom" / "ct_philips_ingenuity_phantom"
ROIS = ("body", "dense")

RTUTILS_WRITE = r"""
import json, sys, numpy as np
from rt_utils import RTStructBuilder
series, masks, out = sys.argv[1], sys.argv[2], sys.argv[3]
data = np.load(masks)
rt = RTStructBuilder.create_new(dicom_series_path=series)
uids = [str(ds.SOPInstanceUID) for ds in rt.series_data]
order = json.loads(data["uids"].tobytes().decode())
index = [order.index(u) for u in uids]  # rt-utils' slice order in ours
for name in json.loads(data["names"].tobytes().decode()):
    mask = data[name][index].transpose(1, 2, 0)  # (rows, columns, slices)
    rt.add_roi(mask=mask, name=name, approximate_contours=False)
rt.save(out)
print(json.dumps({"written": out}))
"""

RTUTILS_READ = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from rt_utils import RTStructBuilder
series, path, names, save = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
t1 = time.perf_counter()
rt = RTStructBuilder.create_from(dicom_series_path=series, rt_struct_path=path)
masks = {n: rt.get_roi_mask_by_name(n) for n in names}
t2 = time.perf_counter()
if save:
    uids = [str(ds.SOPInstanceUID) for ds in rt.series_data]
    np.savez(save, uids=np.frombuffer(json.dumps(uids).encode(), dtype=np.uint8),
             **{n: m.transpose(2, 0, 1).astype(bool) for n, m in masks.items()})
print(json.dumps({"call_s": t2 - t1, "import_s": t1 - t0}))
"""

VOXELHUB_RTSTRUCT = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import voxelhub
from voxelhub.roi import imports
store, path, boundary, save = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
cat = voxelhub.open_catalog(store)
row = cat.series().iloc[0]
t1 = time.perf_counter()
got = imports.import_rtstruct(cat, row, path, boundary=boundary)
t2 = time.perf_counter()
record = {"call_s": t2 - t1, "import_s": t1 - t0}
if save:
    np.savez(save, **{n: g.labels.values for n, g in got.items()})
print(json.dumps(record))
"""

VOXELHUB_PARTS = r"""
import json, sys, time
import numpy as np
import voxelhub
from skimage.draw import polygon
from voxelhub.roi.grid import grid_of
from voxelhub.roi.rtstruct import _slice_of_contours, rasterise, read_rtstruct
store, path = sys.argv[1], sys.argv[2]
cat = voxelhub.open_catalog(store)
volume = voxelhub.open_series(cat.series().iloc[0], catalog=cat)
shape, _ = grid_of(volume)
t = time.perf_counter()
struct = read_rtstruct(path)
record = {"parse_s": time.perf_counter() - t, "fill_s": 0.0, "skimage_fill_s": 0.0}
for roi in struct.rois:
    t = time.perf_counter()
    rasterise(roi.contours, volume)
    record["fill_s"] += time.perf_counter() - t
    pieces, slices, _, _ = _slice_of_contours(roi.contours, volume)
    t = time.perf_counter()
    mask = np.zeros(shape, dtype=bool)
    for xy, k in zip(pieces, slices):
        rr, cc = polygon(xy[:, 1], xy[:, 0], shape=shape[1:])
        one = np.zeros(shape[1:], dtype=bool)
        one[rr, cc] = True
        mask[k] ^= one
    record["skimage_fill_s"] += time.perf_counter() - t
record["contours"] = sum(len(r.contours) for r in struct.rois)
record["points"] = sum(int(sum(len(c) for c in r.contours)) for r in struct.rois)
print(json.dumps(record))
"""

VOXELHUB_SEG = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import voxelhub
from voxelhub.roi import imports
store, path, save = sys.argv[1], sys.argv[2], sys.argv[3]
cat = voxelhub.open_catalog(store)
row = cat.series().iloc[0]
t1 = time.perf_counter()
got = imports.import_seg(cat, row, path, name=None)
t2 = time.perf_counter()
if save:
    np.savez(save, **{n.split("-", 1)[1]: g.labels.values for n, g in got.items()})
print(json.dumps({"call_s": t2 - t1, "import_s": t1 - t0}))
"""

HIGHDICOM_SEG = r"""
import json, sys, time
t0 = time.perf_counter()
import highdicom as hd
import numpy as np
path = sys.argv[1]
t1 = time.perf_counter()
seg = hd.seg.segread(path)
volume = seg.get_volume(combine_segments=False)
array = np.asarray(volume.array)
t2 = time.perf_counter()
print(json.dumps({"call_s": t2 - t1, "import_s": t1 - t0, "shape": list(array.shape)}))
"""


def ensure_rtutils() -> str | None:
    exe = RTUTILS_VENV / "bin" / "python"
    if not exe.exists():  # `make bench` makes it first; by hand, the same command
        print(f"making {RTUTILS_VENV.relative_to(REPO)} (make rtutils) …", flush=True)
        if subprocess.run(["make", "-C", str(REPO), "rtutils"], check=False).returncode != 0:
            print("could not install rt-utils; measuring without it")
            return None
    return str(exe)


def run(python: str, script: str, *args: str) -> dict[str, Any]:
    t = time.perf_counter()
    proc = subprocess.run(
        [python, "-c", script, *args], capture_output=True, text=True, cwd=REPO, check=False
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step failed:\n{proc.stderr[-3000:]}")
    record: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    record["process_s"] = wall
    return record


def timed(python: str, script: str, args: list[str], repeat: int) -> dict[str, Any]:
    runs = [run(python, script, *args) for _ in range(repeat)]
    out: dict[str, Any] = {k: v for k, v in runs[0].items() if not k.endswith("_s")}
    for key in (k for k in runs[0] if k.endswith("_s")):
        out[key] = round(statistics.median(r[key] for r in runs), 3)
        out[f"{key}_runs"] = [round(r[key], 3) for r in runs]
    return out


def prepare() -> tuple[Path, Path, list[str]]:
    """The CT ingested once, its images as a clean folder (symlinks), the two ROI masks."""
    import voxelhub

    store = WORK / "store"
    images = WORK / "images"
    if not (store / "catalog.sqlite").exists():
        report = voxelhub.ingest(SERIES, store, progress=False)
        assert not report.failed, report.summary()
    if not images.exists():
        images.mkdir(parents=True)
        for path in sorted(SERIES.iterdir()):
            with path.open("rb") as f:
                is_image = f.read(132)[128:] == b"DICM" and path.name != "DIRFILE"
            if is_image:
                (images / path.name).symlink_to(path)
    cat = voxelhub.open_catalog(store)
    row = cat.series().iloc[0]
    volume = voxelhub.open_series(row, catalog=cat)
    from voxelhub.roi.labels import volume_path

    meta = dict(cat.location.open_group(volume_path(cat, row)).attrs["voxelhub"])  # type: ignore[arg-type]
    uids = [str(u) for u in meta["source_instance_uids"]]
    hu = np.asarray(volume.values)
    masks = {"body": hu > -300, "dense": hu > 150}
    np.savez(
        WORK / "masks.npz",
        uids=np.frombuffer(json.dumps(uids).encode(), dtype=np.uint8),
        names=np.frombuffer(json.dumps(list(ROIS)).encode(), dtype=np.uint8),
        **masks,
    )
    cat.close()
    return store, images, uids


def write_seg(images: Path, uids: list[str], path: Path) -> None:
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    by_uid = {}
    for file in images.iterdir():
        ds = pydicom.dcmread(file)
        by_uid[str(ds.SOPInstanceUID)] = ds
    sources = [by_uid[u] for u in uids]
    masks = np.load(WORK / "masks.npz")
    labels = np.stack([masks[n] for n in ROIS], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=i + 1,
                segment_label=name,
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
            for i, name in enumerate(ROIS)
        ],
        series_instance_uid=hd.UID(),
        series_number=100,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="VoxelHub benchmark",
        manufacturer_model_name="roi.py",
        software_versions="0",
        device_serial_number="1",
    )
    seg.save_as(path)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown", action="store_true", help="print the table from the JSON")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(RESULTS.read_text())))
        return
    if not SERIES.is_dir():
        sys.exit(f"the 140-slice CT is missing: {SERIES}")
    WORK.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    store, images, uids = prepare()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "series": SERIES.name,
        "repeat": args.repeat,
    }
    masks = np.load(WORK / "masks.npz")
    results["roi_voxels"] = {n: int(masks[n].sum()) for n in ROIS}

    rtutils = ensure_rtutils()
    rtstruct = WORK / "rtutils_rtstruct.dcm"
    if rtutils:
        if not rtstruct.exists():
            run(rtutils, RTUTILS_WRITE, str(images), str(WORK / "masks.npz"), str(rtstruct))
        timing = timed(
            rtutils, RTUTILS_READ, [str(images), str(rtstruct), json.dumps(ROIS), ""], args.repeat
        )
        run(
            rtutils,
            RTUTILS_READ,
            str(images),
            str(rtstruct),
            json.dumps(ROIS),
            str(WORK / "rtutils_masks.npz"),
        )
        results["rtstruct"] = {"rt-utils": timing}
        theirs_npz = np.load(WORK / "rtutils_masks.npz")
        order = json.loads(theirs_npz["uids"].tobytes().decode())
        index = [order.index(u) for u in uids]
        theirs = {n: theirs_npz[n][index] for n in ROIS}
        for boundary in ("centre", "overlap"):
            key = f"voxelhub ({boundary})"
            results["rtstruct"][key] = timed(
                python, VOXELHUB_RTSTRUCT, [str(store), str(rtstruct), boundary, ""], args.repeat
            )
            save = WORK / f"voxelhub_{boundary}.npz"
            run(python, VOXELHUB_RTSTRUCT, str(store), str(rtstruct), boundary, str(save))
            ours = np.load(save)
            results["rtstruct"][key]["dice_vs_rtutils"] = {
                n: round(dice(ours[n], theirs[n]), 4) for n in ROIS
            }
            results["rtstruct"][key]["voxels"] = {n: int(ours[n].sum()) for n in ROIS}
            results["rtstruct"][key]["dice_vs_drawn_masks"] = {
                n: round(dice(ours[n], masks[n]), 4) for n in ROIS
            }
        # once: the previous version's fill takes minutes
        results["rtstruct_parts"] = run(python, VOXELHUB_PARTS, str(store), str(rtstruct))
        results["rtstruct"]["rt-utils"]["voxels"] = {n: int(theirs[n].sum()) for n in ROIS}
        results["rtstruct"]["rt-utils"]["dice_vs_drawn_masks"] = {
            n: round(dice(theirs[n], masks[n]), 4) for n in ROIS
        }

    seg_path = WORK / "highdicom_seg.dcm"
    if not seg_path.exists():
        write_seg(images, uids, seg_path)
    results["seg"] = {
        "voxelhub": timed(python, VOXELHUB_SEG, [str(store), str(seg_path), ""], args.repeat),
        "highdicom": timed(python, HIGHDICOM_SEG, [str(seg_path)], args.repeat),
    }
    run(python, VOXELHUB_SEG, str(store), str(seg_path), str(WORK / "voxelhub_seg.npz"))
    ours = np.load(WORK / "voxelhub_seg.npz")
    results["seg"]["voxelhub"]["equal_to_written_masks"] = {
        n: bool(np.array_equal(ours[n], masks[n])) for n in ROIS
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"RTSTRUCT and SEG onto `{results['series']}` ({results['date']}, "
        f"{results['machine']['cpus']} CPUs, median of {results['repeat']} fresh processes; "
        "`benchmarks/results/roi.json`):",
        "",
        "| import | call s | process s | voxels body / dense | Dice vs rt-utils | "
        "Dice vs drawn masks |",
        "|---|---|---|---|---|---|",
    ]
    rt = results.get("rtstruct", {})
    for key, r in rt.items():
        pairs = []
        for field in ("dice_vs_rtutils", "dice_vs_drawn_masks"):
            d = r.get(field)
            pairs.append(f"{d['body']:.4f} / {d['dense']:.4f}" if d else "—")
        lines.append(
            f"| RTSTRUCT, {key} | {r['call_s']:.2f} | {r['process_s']:.2f} | "
            f"{r['voxels']['body']:,} / {r['voxels']['dense']:,} | {pairs[0]} | {pairs[1]} |"
        )
    for key, r in results.get("seg", {}).items():
        equal = r.get("equal_to_written_masks")
        same = "exact" if equal and all(equal.values()) else ("—" if equal is None else "differs")
        lines.append(f"| SEG, {key} | {r['call_s']:.2f} | {r['process_s']:.2f} | | | {same} |")
    centre = results.get("rtstruct_parts", {})
    if "fill_s" in centre:
        lines += [
            "",
            f"Inside `import_rtstruct` ({centre['contours']:,} contours, {centre['points']:,} "
            f"points): parsing {centre['parse_s']:.2f} s; even-odd scanline fill "
            f"{centre['fill_s']:.2f} s, against {centre['skimage_fill_s']:.2f} s for "
            "`skimage.draw.polygon` per contour (the previous version's fill) on the same contours.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
