"""Ingest benchmark: VoxelHub ingest against dcm2niix and SimpleITK on the same DICOM series.

Run from anywhere::

    .venv/bin/python benchmarks/ingest.py                 # full size, 3 repeats (a few minutes)
    .venv/bin/python benchmarks/ingest.py --quick         # 60-slice synthetic case (smoke test)
    .venv/bin/python benchmarks/ingest.py --markdown      # print the table of the saved results

Inputs: a synthetic 300 × 512² int16 CT written with ``tests/dicom_factory.py`` (uniform random
noise: the worst case for lossless compression) and the real ``ct_philips_ingenuity_phantom``
(140 × 512² CT) from the shared data folder (``$VOXELHUB_SHARED`` or ``../shared``).

Each tool runs in a fresh subprocess, so wall time includes interpreter start-up and imports and
peak RSS belongs to that tool alone.  Peak RSS is the child's own ``ru_maxrss`` from
``os.wait4``: for a process tree (VoxelHub's worker pool) that is the largest single process.
The summed footprint of the whole tree (PSS, sampled every 20 ms) is recorded beside it.
Inputs are read once before timing, so every tool sees a warm page cache; each tool also runs
once untimed (warm-up, output sizes and shape check), then the timed runs go round-robin.

A full run writes ``benchmarks/results/ingest.json`` and refreshes the table in
``benchmarks/README.md``; ``--quick`` writes its JSON into the work folder only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
RESULTS = BENCH_DIR / "results" / "ingest.json"
README = BENCH_DIR / "README.md"
VENV_BIN = Path(sys.executable).parent
TABLE_START = "<!-- ingest-table:start -->"
TABLE_END = "<!-- ingest-table:end -->"
MIB = 1024 * 1024

SITK_SCRIPT = """
import json, sys
import SimpleITK as sitk
reader = sitk.ImageSeriesReader()
names = reader.GetGDCMSeriesFileNames(sys.argv[1])
reader.SetFileNames(names)
array = sitk.GetArrayFromImage(reader.Execute())
print(json.dumps({"shape": list(array.shape), "dtype": str(array.dtype)}))
"""

IMPORT_SCRIPT = "import voxelhub.cli, voxelhub.ingest"


# ----------------------------------------------------------------------------- measurement


@dataclass
class Run:
    """One subprocess: wall time, its own peak RSS, the sampled tree footprint, its exit."""

    wall_s: float
    maxrss_mib: float
    tree_peak_mib: float
    max_processes: int
    returncode: int
    stdout: str
    stderr: str


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (Linux /proc); empty elsewhere."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
            except OSError:
                continue
            for k in kids:
                out.append(int(k))
                todo.append(int(k))
    return out


def _footprint_kib(pid: int) -> int:
    """Proportional set size of one process (shared pages split between sharers), else RSS."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        try:
            fields = Path(f"/proc/{pid}/statm").read_text().split()
            return int(fields[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
        except OSError:
            return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


class _Sampler(threading.Thread):
    """Polls the summed PSS of a process tree and the number of processes in it."""

    def __init__(self, pid: int, *, include_root: bool = True, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.include_root = include_root
        self.interval = interval
        self.peak_kib = 0
        self.max_processes = 0
        self._done = threading.Event()

    def run(self) -> None:
        if not Path("/proc").is_dir():
            return
        while not self._done.is_set():
            pids = _children(self.pid)
            if self.include_root:
                pids.append(self.pid)
            total = sum(_footprint_kib(p) for p in pids)
            self.peak_kib = max(self.peak_kib, total)
            self.max_processes = max(self.max_processes, len(pids))
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


# A small launcher between the benchmark and each tool.  On Linux a child's ru_maxrss starts at
# the high-water mark of the memory image it was forked from (recorded again at exec), so tools
# forked straight from this (large) process would all report at least its RSS.  The launcher is a
# bare interpreter (-I -S, a few MiB): it forks and execs the tool, times it, reaps it with
# os.wait4 and prints the tool's own rusage as JSON.
LAUNCHER = """
import json, os, sys, time
out_path, err_path, *cmd = sys.argv[1:]
flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
out, err = os.open(out_path, flags, 0o644), os.open(err_path, flags, 0o644)
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(out, 1)
    os.dup2(err, 2)
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
print(json.dumps({"wall_s": wall, "maxrss": usage.ru_maxrss,
                  "returncode": os.waitstatus_to_exitcode(status)}))
"""


def measure(cmd: list[str], env: dict[str, str], log_dir: Path) -> Run:
    """Run ``cmd`` in a fresh process; wall time from fork to reap, rusage from ``os.wait4``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / "stdout.txt", log_dir / "stderr.txt"
    launcher = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", LAUNCHER, str(out_path), str(err_path), *cmd],
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    sampler = _Sampler(launcher.pid, include_root=False)
    sampler.start()
    report, _ = launcher.communicate()
    sampler.stop()
    if launcher.returncode != 0:
        raise RuntimeError(f"launcher failed ({launcher.returncode}) for {cmd}")
    info = json.loads(report)
    # Linux reports ru_maxrss in KiB, macOS in bytes
    maxrss = info["maxrss"] / (MIB if sys.platform == "darwin" else 1024)
    return Run(
        wall_s=info["wall_s"],
        maxrss_mib=maxrss,
        tree_peak_mib=sampler.peak_kib / 1024,
        max_processes=sampler.max_processes,
        returncode=info["returncode"],
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )


def tree_bytes(path: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes on disk) of every file under ``path``."""
    apparent = allocated = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            apparent += st.st_size
            allocated += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return apparent, allocated


# ----------------------------------------------------------------------------- inputs


@dataclass
class Case:
    key: str
    label: str
    path: Path
    note: str
    slices: int = 0
    rows: int = 0
    columns: int = 0
    files: int = 0

    @property
    def payload_bytes(self) -> int:
        return self.slices * self.rows * self.columns * 2


def make_synthetic(work: Path, slices: int) -> Path:
    """Write (or reuse) the synthetic CT series with tests/dicom_factory.py."""
    folder = work / f"synthetic_{slices}x512x512"
    marker = work / f"synthetic_{slices}x512x512.complete"  # outside: the input is DICOM only
    if marker.exists():
        return folder
    if folder.exists():  # unfinished earlier attempt
        shutil.rmtree(folder)
    sys.path.insert(0, str(REPO))
    from tests.dicom_factory import write_series

    print(f"writing synthetic series: {slices} × 512 × 512 int16 → {folder}", flush=True)
    write_series(
        folder,
        slices=slices,
        rows=512,
        columns=512,
        pixel_spacing=(0.7, 0.7),
        slice_step=1.0,
        series_uid=f"1.2.826.0.1.3680043.8.498.7.{slices}",
        patient_id="BENCH-001",
        patient_name="Bench^Synthetic",
    )
    marker.write_text("ok\n")
    return folder


def describe(case: Case) -> None:
    """Count the image instances and read their matrix size (headers only)."""
    import pydicom

    shapes: set[tuple[int, int]] = set()
    files = frames = 0
    for entry in sorted(case.path.rglob("*")):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(entry, stop_before_pixels=True)
        except Exception:
            continue
        if "Rows" not in ds or "Columns" not in ds:
            continue
        files += 1
        frames += int(ds.get("NumberOfFrames", 1) or 1)
        shapes.add((int(ds.Rows), int(ds.Columns)))
    if len(shapes) != 1:
        raise SystemExit(f"{case.path}: expected one matrix size, found {sorted(shapes)}")
    case.rows, case.columns = shapes.pop()
    case.slices, case.files = frames, files


def read_input(path: Path) -> None:
    """Read every file once so each tool starts from the same warm page cache."""
    for entry in path.rglob("*"):
        if entry.is_file():
            with entry.open("rb") as fp:
                while fp.read(1 << 22):
                    pass


# ----------------------------------------------------------------------------- tools


@dataclass
class Tool:
    key: str
    label: str

    def command(self, case: Case, out: Path) -> list[str]:
        raise NotImplementedError

    def inspect(self, case: Case, out: Path, run: Run) -> dict[str, Any]:
        """Output sizes and the array shape the tool produced (warm-up run only)."""
        return {}

    def extra(self, runs: list[Run]) -> dict[str, Any]:
        """Tool-specific figures taken from the timed runs' output."""
        return {}


class VoxelHub(Tool):
    def __init__(self, workers: int | None) -> None:
        label = "VoxelHub ingest" + ("" if workers is None else f" --workers {workers}")
        super().__init__("voxelhub" if workers is None else f"voxelhub_w{workers}", label)
        self.workers = workers

    def command(self, case: Case, out: Path) -> list[str]:
        cmd = [str(VENV_BIN / "voxelhub"), "ingest", str(case.path), "--store", str(out / "store")]
        if self.workers is not None:
            cmd += ["--workers", str(self.workers)]
        return [*cmd, "--quiet"]

    def inspect(self, case: Case, out: Path, run: Run) -> dict[str, Any]:
        store = out / "store"
        volumes = sorted(store.glob("projects/*/*.ome.zarr"))
        info: dict[str, Any] = {"volumes": len(volumes), "summary": run.stdout.strip()}
        info["store_bytes"], info["store_disk_bytes"] = tree_bytes(store)
        if len(volumes) == 1:
            vol = volumes[0]
            info["volume_bytes"], _ = tree_bytes(vol)
            info["level0_bytes"], _ = tree_bytes(vol / "0")
            meta = json.loads((vol / "0" / "zarr.json").read_text())
            info["shape"] = list(meta["shape"])
            info["dtype"] = meta["data_type"]
            info["levels"] = sum(1 for p in vol.iterdir() if (p / "zarr.json").exists())
            info["compression_ratio_level0"] = case.payload_bytes / info["level0_bytes"]
            info["compression_ratio_all_levels"] = case.payload_bytes / info["volume_bytes"]
        return info


class Dcm2niix(Tool):
    def __init__(self) -> None:
        super().__init__("dcm2niix", "dcm2niix → NIfTI")

    def command(self, case: Case, out: Path) -> list[str]:
        out.mkdir(parents=True, exist_ok=True)
        exe = str(VENV_BIN / "dcm2niix")
        return [exe, "-z", "n", "-b", "n", "-f", "out", "-o", str(out), str(case.path)]

    def inspect(self, case: Case, out: Path, run: Run) -> dict[str, Any]:
        niis = sorted(out.glob("*.nii"))
        info: dict[str, Any] = {"outputs": [p.name for p in niis]}
        info["output_bytes"] = sum(p.stat().st_size for p in niis)
        if len(niis) == 1:
            import nibabel as nib

            shape = nib.load(niis[0]).shape
            info["shape"] = [int(shape[2]), int(shape[1]), int(shape[0])]  # as (z, y, x)
        return info

    def extra(self, runs: list[Run]) -> dict[str, Any]:
        # the PyPI `dcm2niix` command is a Python entry point that runs the native binary;
        # the binary reports its own conversion time
        core = []
        for run in runs:
            m = re.search(r"Conversion required ([0-9.]+) seconds", run.stdout)
            if m:
                core.append(float(m.group(1)))
        if not core:
            return {}
        median = statistics.median(core)
        return {"native_conversion_median_s": round(median, 4), "native_conversion_s": core}


class SimpleITK(Tool):
    def __init__(self) -> None:
        super().__init__("simpleitk", "SimpleITK → numpy")

    def command(self, case: Case, out: Path) -> list[str]:
        return [sys.executable, "-c", SITK_SCRIPT, str(case.path)]

    def inspect(self, case: Case, out: Path, run: Run) -> dict[str, Any]:
        try:
            return dict(json.loads(run.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            return {}


# ----------------------------------------------------------------------------- the benchmark


def child_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    # never write into someone's real catalog or secrets folder
    env.pop("VOXELHUB_CATALOG_URL", None)
    env.pop("VOXELHUB_STORE", None)
    env["VOXELHUB_SECRETS_DIR"] = str(work / "secrets")
    env.setdefault("PYTHONDONTWRITEBYTECODE", "0")
    return env


def versions() -> dict[str, str]:
    import numcodecs
    import numpy
    import pydicom
    import SimpleITK as sitk
    import zarr

    import voxelhub

    out = subprocess.run(
        [str(VENV_BIN / "dcm2niix"), "-v"], capture_output=True, text=True, check=False
    )
    first = (out.stdout or out.stderr).strip().splitlines()
    return {
        "python": platform.python_version(),
        "voxelhub": getattr(voxelhub, "__version__", "unknown"),
        "pydicom": pydicom.__version__,
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
        "numpy": numpy.__version__,
        "SimpleITK": sitk.Version_VersionString(),
        "dcm2niix": first[0] if first else "unknown",
    }


def machine() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    with contextlib.suppress(ValueError, OSError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": cpu_model or platform.processor(),
        "memory_gib": round(mem / 2**30, 1),
    }


def summarize(case: Case, runs: list[Run]) -> dict[str, Any]:
    walls = [r.wall_s for r in runs]
    median = statistics.median(walls)
    volume_mib = case.payload_bytes / MIB
    peak = max(r.maxrss_mib for r in runs)
    tree = max(r.tree_peak_mib for r in runs)
    return {
        "wall_s": [round(w, 4) for w in walls],
        "wall_median_s": round(median, 4),
        "wall_min_s": round(min(walls), 4),
        "mb_per_s": round(case.payload_bytes / 1e6 / median, 1),
        "peak_rss_mib": round(peak, 1),
        "peak_rss_x_volume": round(peak / volume_mib, 2),
        "tree_peak_pss_mib": round(tree, 1),
        "tree_peak_pss_x_volume": round(tree / volume_mib, 2),
        "max_processes": max(r.max_processes for r in runs),
    }


def run_case(
    case: Case, tools: list[Tool], repeat: int, work: Path, env: dict[str, str]
) -> dict[str, Any]:
    describe(case)
    print(
        f"\n== {case.label}: {case.slices} × {case.rows} × {case.columns} "
        f"({case.payload_bytes / 1e6:.1f} MB of pixels, {case.files} files)",
        flush=True,
    )
    read_input(case.path)
    runs: dict[str, list[Run]] = {t.key: [] for t in tools}
    outputs: dict[str, dict[str, Any]] = {}
    base = work / "runs" / case.key
    for rnd in range(repeat + 1):  # round 0 is the untimed warm-up
        for tool in tools:
            out = base / f"{tool.key}-{rnd}"
            if out.exists():
                shutil.rmtree(out)
            run = measure(tool.command(case, out), env, out / "log")
            what = "warm-up" if rnd == 0 else f"run {rnd}/{repeat}"
            print(
                f"  {tool.label:<28} {what:<10} {run.wall_s:8.2f} s  "
                f"{run.maxrss_mib:8.1f} MiB  rc={run.returncode}",
                flush=True,
            )
            if run.returncode != 0:
                raise SystemExit(
                    f"{tool.label} failed on {case.label} (exit {run.returncode}):\n"
                    f"{' '.join(tool.command(case, out))}\n{run.stdout}\n{run.stderr}"
                )
            if rnd == 0:
                outputs[tool.key] = tool.inspect(case, out, run)
            else:
                runs[tool.key].append(run)
            shutil.rmtree(out, ignore_errors=True)
    results: dict[str, Any] = {}
    for tool in tools:
        results[tool.key] = {"label": tool.label, **summarize(case, runs[tool.key])}
        results[tool.key].update(tool.extra(runs[tool.key]))
        results[tool.key]["output"] = outputs[tool.key]
    ref = results.get("dcm2niix")
    for res in results.values():
        if ref:
            res["time_x_dcm2niix"] = round(res["wall_median_s"] / ref["wall_median_s"], 2)
    par, seq = results.get("voxelhub"), results.get("voxelhub_w1")
    if par and seq:
        par["speedup_vs_workers_1"] = round(seq["wall_median_s"] / par["wall_median_s"], 2)
    shapes = {k: tuple(v["output"].get("shape", ())) for k, v in results.items()}
    expected = (case.slices, case.rows, case.columns)
    mismatched = {k: list(s) for k, s in shapes.items() if s and s != expected}
    return {
        "label": case.label,
        "path": str(case.path),
        "note": case.note,
        "files": case.files,
        "shape": list(expected),
        "dtype": "int16",
        "payload_mb": round(case.payload_bytes / 1e6, 2),
        "volume_mib": round(case.payload_bytes / MIB, 2),
        "shape_mismatches": mismatched,
        "tools": results,
    }


def measure_imports(repeat: int, env: dict[str, str], work: Path) -> dict[str, Any]:
    """Interpreter start-up plus ``import voxelhub.cli, voxelhub.ingest``: the CLI's fixed cost."""
    runs = [
        measure([sys.executable, "-c", IMPORT_SCRIPT], env, work / "runs" / "imports" / str(i))
        for i in range(repeat + 1)
    ][1:]
    walls = [r.wall_s for r in runs]
    return {
        "wall_median_s": round(statistics.median(walls), 4),
        "wall_min_s": round(min(walls), 4),
        "peak_rss_mib": round(max(r.maxrss_mib for r in runs), 1),
    }


# ----------------------------------------------------------------------------- reporting

COLUMNS = [
    ("tool", "tool"),
    ("median", "median s"),
    ("min", "min s"),
    ("mbs", "MB/s"),
    ("rss", "peak RSS MiB"),
    ("rssx", "RSS × vol"),
    ("tree", "tree PSS MiB"),
    ("procs", "procs"),
    ("vsd", "× dcm2niix"),
]


def table_rows(results: dict[str, Any]) -> list[tuple[str, list[dict[str, str]]]]:
    out = []
    for case in results["cases"].values():
        rows = []
        for res in case["tools"].values():
            rows.append(
                {
                    "tool": res["label"],
                    "median": f"{res['wall_median_s']:.2f}",
                    "min": f"{res['wall_min_s']:.2f}",
                    "mbs": f"{res['mb_per_s']:.1f}",
                    "rss": f"{res['peak_rss_mib']:.0f}",
                    "rssx": f"{res['peak_rss_x_volume']:.2f}",
                    "tree": f"{res['tree_peak_pss_mib']:.0f}",
                    "procs": str(res["max_processes"]),
                    "vsd": f"{res['time_x_dcm2niix']:.1f}" if "time_x_dcm2niix" in res else "",
                }
            )
        title = (
            f"{case['label']} — {' × '.join(map(str, case['shape']))} int16, "
            f"{case['payload_mb']:.1f} MB of pixels ({case['volume_mib']:.1f} MiB)"
        )
        out.append((title, rows))
    return out


def store_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for case in results["cases"].values():
        vh = case["tools"].get("voxelhub", {}).get("output", {})
        nii = case["tools"].get("dcm2niix", {}).get("output", {})
        if "level0_bytes" not in vh:
            continue
        lines.append(
            f"{case['label']}: store {vh['store_bytes'] / 1e6:.1f} MB "
            f"({vh['store_disk_bytes'] / 1e6:.1f} MB allocated; volume {vh['volume_bytes'] / 1e6:.1f}"
            f" MB in {vh['levels']} levels, level 0 {vh['level0_bytes'] / 1e6:.1f} MB); "
            f"compression {vh['compression_ratio_level0']:.2f}× (level 0), "
            f"{vh['compression_ratio_all_levels']:.2f}× (whole pyramid); "
            f"NIfTI {nii.get('output_bytes', 0) / 1e6:.1f} MB"
        )
    return lines


def targets(results: dict[str, Any]) -> list[str]:
    lines = []
    for case in results["cases"].values():
        vh = case["tools"].get("voxelhub")
        if not vh:
            continue
        rss_ok = "meets" if vh["peak_rss_x_volume"] < 2 else "MISSES"
        t = vh.get("time_x_dcm2niix")
        t_ok = "meets" if t is not None and t <= 1 else "MISSES"
        above = vh.get("peak_rss_above_imports_x_volume")
        lines.append(
            f"{case['label']}: peak RSS {vh['peak_rss_x_volume']:.2f}× volume ({rss_ok} < 2×"
            + (f"; {above:.2f}× above the import baseline" if above is not None else "")
            + f"); time {t}× dcm2niix ({t_ok} ≤ 1×)"
        )
        if "speedup_vs_workers_1" in vh:
            lines.append(
                f"{case['label']}: worker pool ({vh['max_processes'] - 1} workers) vs "
                f"--workers 1: {vh['speedup_vs_workers_1']:.2f}× speed-up on "
                f"{results['machine']['cpu_count']} CPUs"
            )
        d2n = case["tools"].get("dcm2niix", {})
        if "native_conversion_median_s" in d2n:
            lines.append(
                f"{case['label']}: dcm2niix native binary {d2n['native_conversion_median_s']:.2f} s"
                f" of its {d2n['wall_median_s']:.2f} s wall (the rest is the Python entry point)"
            )
    return lines


def text_report(results: dict[str, Any]) -> str:
    out = []
    for title, rows in table_rows(results):
        widths = {k: max(len(h), *(len(r[k]) for r in rows)) for k, h in COLUMNS}
        out.append(title)
        out.append("  ".join(h.ljust(widths[k]) for k, h in COLUMNS))
        out.append("  ".join("-" * widths[k] for k, _ in COLUMNS))
        for r in rows:
            cells = [
                r[k].ljust(widths[k]) if k == "tool" else r[k].rjust(widths[k]) for k, _ in COLUMNS
            ]
            out.append("  ".join(cells))
        out.append("")
    out += [*store_lines(results), "", *targets(results)]
    imp = results.get("voxelhub_import")
    if imp:
        out.append(
            f"VoxelHub fixed cost (interpreter + imports): {imp['wall_median_s']:.2f} s, "
            f"{imp['peak_rss_mib']:.0f} MiB"
        )
    for note in results["notes"]:
        out.append(f"note: {note}")
    return "\n".join(out)


def markdown_report(results: dict[str, Any]) -> str:
    m, v = results["machine"], results["versions"]
    out = [
        f"Run {results['date']} with `{results['command']}` "
        f"(repeat {results['repeat']}{', quick' if results['quick'] else ''}).",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs ({m['cpu_model']}), "
        f"{m['memory_gib']} GiB.  ",
        f"Versions: voxelhub {v['voxelhub']}, pydicom {v['pydicom']}, zarr {v['zarr']}, "
        f"numcodecs {v['numcodecs']}, SimpleITK {v['SimpleITK']}, {v['dcm2niix']}, "
        f"Python {v['python']}.",
        "",
    ]
    for title, rows in table_rows(results):
        out.append(f"**{title}**")
        out.append("")
        out.append("| " + " | ".join(h for _, h in COLUMNS) + " |")
        out.append("|" + "|".join("---" if k == "tool" else "---:" for k, _ in COLUMNS) + "|")
        for r in rows:
            out.append("| " + " | ".join(r[k] for k, _ in COLUMNS) + " |")
        out.append("")
    out += [f"- {line}" for line in store_lines(results)]
    out += [f"- {line}" for line in targets(results)]
    imp = results.get("voxelhub_import")
    if imp:
        out.append(
            f"- VoxelHub fixed cost per run (interpreter start-up + `import voxelhub.cli, "
            f"voxelhub.ingest`): {imp['wall_median_s']:.2f} s, {imp['peak_rss_mib']:.0f} MiB"
        )
    out += [f"- {note}" for note in results["notes"]]
    return "\n".join(out) + "\n"


def refresh_readme(results: dict[str, Any]) -> bool:
    """Replace the generated block of benchmarks/README.md; False if its markers are missing."""
    if not README.exists():
        return False
    text = README.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        return False
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    README.write_text(f"{head}{TABLE_START}\n{markdown_report(results)}{TABLE_END}{tail}")
    return True


# ----------------------------------------------------------------------------- main


def shared_dir() -> Path:
    env = os.environ.get("VOXELHUB_SHARED")
    return Path(env) if env else (REPO / ".." / "shared").resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per tool (default 3)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    parser.add_argument("--quick", action="store_true", help="60-slice synthetic case")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the markdown table of the results JSON and exit (no benchmark run)",
    )
    parser.add_argument(
        "--update-readme",
        action="store_true",
        help="with --markdown: also rewrite the table in benchmarks/README.md",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"results JSON (default {RESULTS.relative_to(REPO)}; --quick: WORK/ingest.json)",
    )
    args = parser.parse_args(argv)

    if args.markdown:
        results = json.loads((args.output or RESULTS).read_text())
        print(markdown_report(results), end="")
        if args.update_readme and not refresh_readme(results):
            print(f"no {TABLE_START} … {TABLE_END} block in {README}", file=sys.stderr)
            return 1
        return 0
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="voxelhub-bench-")
        work = Path(tmp.name)
    else:
        work = args.work.resolve()
        work.mkdir(parents=True, exist_ok=True)
    try:
        slices = 60 if args.quick else 300
        env = child_env(work)
        cases = [
            Case(
                "synthetic",
                f"synthetic CT ({slices} slices)",
                make_synthetic(work, slices),
                "tests/dicom_factory.py write_series: uniform random noise in [0, 3000), "
                "the worst case for lossless compression (real CT compresses far better)",
            )
        ]
        phantom = shared_dir() / "data" / "dicom" / "ct_philips_ingenuity_phantom"
        notes = [
            "synthetic pixels are uniform random noise: a worst case for compression and for "
            "store size; the phantom shows real-data ratios",
            "wall time includes process start-up and imports; inputs are in the page cache",
            "peak RSS = the tool's own ru_maxrss (os.wait4); for VoxelHub's worker pool that is "
            "the largest single process; tree PSS = summed proportional set size of the whole "
            "process tree, sampled every 20 ms; procs = most processes seen at once",
            "MB/s = pixel payload (slices × rows × columns × 2 bytes, 1e6 bytes/MB) / median wall",
            "dcm2niix is the PyPI package's command: a Python entry point around the native "
            "binary, so its wall time includes one Python start-up; the binary's own "
            "'Conversion required' time is recorded as native_conversion_median_s",
        ]
        if phantom.is_dir():
            cases.append(
                Case(
                    "phantom",
                    "ct_philips_ingenuity_phantom",
                    phantom,
                    "real Philips Ingenuity CT phantom, 140 × 512², uncompressed DICOM",
                )
            )
        else:
            notes.append(f"phantom skipped: {phantom} not found (set VOXELHUB_SHARED)")
            print(f"warning: {phantom} not found, phantom case skipped", file=sys.stderr)
        tools: list[Tool] = [VoxelHub(None), VoxelHub(1), Dcm2niix(), SimpleITK()]
        results: dict[str, Any] = {
            "benchmark": "ingest",
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join(
                [".venv/bin/python", "benchmarks/ingest.py", *(argv or sys.argv[1:])]
            ),
            "repeat": args.repeat,
            "quick": args.quick,
            "machine": machine(),
            "versions": versions(),
            "notes": notes,
            "cases": {},
        }
        print(
            f"machine: {results['machine']['platform']}, {results['machine']['cpu_count']} CPUs",
            flush=True,
        )
        for case in cases:
            results["cases"][case.key] = run_case(case, tools, args.repeat, work, env)
        imports = results["voxelhub_import"] = measure_imports(args.repeat, env, work)
        for case in results["cases"].values():
            for key, res in case["tools"].items():
                if key.startswith("voxelhub"):
                    above = res["peak_rss_mib"] - imports["peak_rss_mib"]
                    res["peak_rss_above_imports_x_volume"] = round(above / case["volume_mib"], 2)
        true = shutil.which("true") or "/bin/true"
        floor = measure([true], env, work / "runs" / "floor").maxrss_mib
        results["rss_floor_mib"] = round(floor, 1)
        results["notes"].append(
            f"peak RSS floor of the method: {floor:.1f} MiB (`true` run through the launcher)"
        )
        for case in results["cases"].values():
            if case["shape_mismatches"]:
                results["notes"].append(
                    f"{case['label']}: output shapes differ from the input "
                    f"{case['shape']}: {case['shape_mismatches']}"
                )
        output = args.output or (work / "ingest.json" if args.quick else RESULTS)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print("\n" + text_report(results))
        print(f"\nresults: {output}")
        if output.resolve() == RESULTS.resolve() and refresh_readme(results):
            print(f"table refreshed in {README}")
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
