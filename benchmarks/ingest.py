"""Ingest benchmark: VoxelHub ingest against dcm2niix and SimpleITK on the same DICOM series.

Run from anywhere::

    .venv/bin/python benchmarks/ingest.py                 # full size, 3 repeats (a few minutes)
    .venv/bin/python benchmarks/ingest.py --quick         # 60-slice synthetic case (smoke test)
    .venv/bin/python benchmarks/ingest.py --case archive  # one part: ct, archive, index, fixed, profile
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

Parts (``--case``, repeatable; default ``all``):

- ``ct``: the two CT series above, each tool once per round.
- ``archive``: the whole shared DICOM folder plus a synthetic archive of 5,000 small files
  (50 series × 100 slices of 64² MR, ``write_series``), ingested by one ``voxelhub ingest`` over
  both folders, against dcm2niix converting the same files (one call on a parent folder that
  holds both through symlinks).
- ``index``: header indexing alone, ``voxelhub.dicom.index.index(paths, workers=N)`` for N = 1
  and 2 in a fresh process, against dcm2niix's header-only modes.
- ``fixed``: the CLI's fixed cost: interpreter start-up, the imports, ``-X importtime``.
- ``profile``: py-spy (or cProfile) samples of one ingest of the phantom and of the archive.

A full run writes ``benchmarks/results/ingest.json`` and refreshes the tables in
``benchmarks/README.md``; a run of some parts merges them into the saved JSON; ``--quick``
writes its JSON into the work folder only.
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
PROFILE_START = "<!-- ingest-profile:start -->"
PROFILE_END = "<!-- ingest-profile:end -->"
PARTS = ("ct", "archive", "index", "fixed", "profile")
ARCHIVE_SERIES, ARCHIVE_SLICES, ARCHIVE_SIZE = 50, 100, 64
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

# every module `voxelhub ingest` has loaded when it opens its first file (voxelhub.ingest loads
# the store, catalog and conversion modules inside its functions, after the header index)
IMPORT_SCRIPT = "import voxelhub.cli, voxelhub.ingest, voxelhub.dicom.index"

# the CLI up to the moment it opens its first input file: an audit hook ends the process there
# (argv = input folder, store); one worker, so the first read happens in this process
FIRST_READ_SCRIPT = """
import os, sys
folder, store = sys.argv[1], sys.argv[2]
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].startswith(folder):
        os._exit(0 if not os.path.exists(store) else 3)
sys.addaudithook(hook)
from voxelhub.cli import main
sys.argv = ["voxelhub", "ingest", folder, "--store", store, "--quiet", "--workers", "1"]
main()
os._exit(4)
"""

# header indexing alone, timed inside the process (imports excluded): argv = workers, paths...
INDEX_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
from voxelhub.dicom.index import index, ZIP_SEP
t1 = time.perf_counter()
result = index(sys.argv[2:], workers=int(sys.argv[1]), progress=False)
t2 = time.perf_counter()
sources = {f.source for f in result.frames} | {r.source for r in result.rejected}
print(json.dumps({"import_s": t1 - t0, "index_s": t2 - t1, "files": len(sources)
                  + len(result.skipped), "frames": len(result.frames),
                  "rejected": len(result.rejected), "skipped": len(result.skipped)}))
"""


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
    inputs: tuple[Path, ...] = ()  # what VoxelHub is given; default (path,)
    input_bytes: int = 0

    @property
    def payload_bytes(self) -> int:
        return self.slices * self.rows * self.columns * 2

    @property
    def sources(self) -> list[Path]:
        return list(self.inputs) or [self.path]


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


def make_archive(work: Path) -> Path:
    """Write (or reuse) the synthetic archive: many small MR series in one folder each."""
    name = f"archive_{ARCHIVE_SERIES}x{ARCHIVE_SLICES}x{ARCHIVE_SIZE}x{ARCHIVE_SIZE}"
    folder, marker = work / name, work / f"{name}.complete"
    if marker.exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    sys.path.insert(0, str(REPO))
    from tests.dicom_factory import write_series

    print(
        f"writing synthetic archive: {ARCHIVE_SERIES} series × {ARCHIVE_SLICES} × "
        f"{ARCHIVE_SIZE}² MR → {folder}",
        flush=True,
    )
    for s in range(ARCHIVE_SERIES):
        write_series(
            folder / f"series{s:03d}",
            slices=ARCHIVE_SLICES,
            rows=ARCHIVE_SIZE,
            columns=ARCHIVE_SIZE,
            modality="MR",
            pixel_spacing=(1.0, 1.0),
            slice_step=2.0,
            series_uid=f"1.2.826.0.1.3680043.8.498.8.{s + 1}",
            study_uid=f"1.2.826.0.1.3680043.8.498.9.{s // 5 + 1}",
            patient_id=f"BENCH-A{s // 5:02d}",
            patient_name="Bench^Archive",
            seed=s,
        )
    marker.write_text("ok\n")
    return folder


def archive_case(work: Path, shared_dicom: Path) -> Case:
    """Shared DICOM + synthetic archive; ``path`` is a parent folder linking both (for dcm2niix)."""
    synth = make_archive(work)
    parent = work / "archive_input"
    parent.mkdir(exist_ok=True)
    for link, target in (("shared", shared_dicom), ("synthetic", synth)):
        dest = parent / link
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        dest.symlink_to(target.resolve(), target_is_directory=True)
    case = Case(
        "archive",
        "archive: shared DICOM + synthetic 5,000-file archive",
        parent,
        f"all of {shared_dicom} plus {ARCHIVE_SERIES} synthetic MR series × {ARCHIVE_SLICES} "
        f"slices of {ARCHIVE_SIZE}² (tests/dicom_factory.py write_series)",
        inputs=(shared_dicom.resolve(), synth),
    )
    for src in case.sources:
        for _root, _dirs, names in os.walk(src):
            case.files += len(names)
        case.input_bytes += tree_bytes(src)[0]
    return case


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
    for root, _dirs, names in os.walk(path, followlinks=True):
        for name in names:
            entry = Path(root, name)
            if entry.is_file():
                with entry.open("rb") as fp:
                    while fp.read(1 << 22):
                        pass


# ----------------------------------------------------------------------------- tools


@dataclass
class Tool:
    key: str
    label: str
    ok_codes: tuple[int, ...] = (0,)

    def command(self, case: Case, out: Path) -> list[str]:
        raise NotImplementedError

    def inspect(self, case: Case, out: Path, run: Run) -> dict[str, Any]:
        """Output sizes and the array shape the tool produced (warm-up run only)."""
        return {}

    def extra(self, runs: list[Run]) -> dict[str, Any]:
        """Tool-specific figures taken from the timed runs' output."""
        return {}


class VoxelHub(Tool):
    def __init__(self, workers: int | None, ok_codes: tuple[int, ...] = (0,)) -> None:
        label = "VoxelHub ingest" + ("" if workers is None else f" --workers {workers}")
        key = "voxelhub" if workers is None else f"voxelhub_w{workers}"
        super().__init__(key, label, ok_codes)
        self.workers = workers

    def command(self, case: Case, out: Path) -> list[str]:
        cmd = [str(VENV_BIN / "voxelhub"), "ingest", *map(str, case.sources)]
        cmd += ["--store", str(out / "store")]
        if self.workers is not None:
            cmd += ["--workers", str(self.workers)]
        return [*cmd, "--quiet"]

    def inspect(self, case: Case, out: Path, run: Run) -> dict[str, Any]:
        store = out / "store"
        # projects/<project>/<folder>/<volume>.ome.zarr (the folder level came with a store change)
        volumes = sorted(store.glob("projects/**/*.ome.zarr"))
        info: dict[str, Any] = {"volumes": len(volumes), "summary": run.stdout.strip()}
        info["returncode"] = run.returncode
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
        return native_time(runs)


def native_time(runs: list[Run]) -> dict[str, Any]:
    """The PyPI `dcm2niix` command is a Python entry point that runs the native binary; the
    binary reports its own conversion time."""
    core = []
    for run in runs:
        m = re.search(r"Conversion required ([0-9.]+) seconds", run.stdout)
        if m:
            core.append(float(m.group(1)))
    if not core:
        return {}
    median = statistics.median(core)
    return {"native_conversion_median_s": round(median, 4), "native_conversion_s": core}


class Dcm2niixTree(Tool):
    """dcm2niix over a folder tree of many series: ``-b y`` (NIfTI + JSON) or ``-b o`` (JSON only,
    headers) or ``-q y`` (only search the tree for DICOM files)."""

    def __init__(self, mode: str) -> None:
        labels = {
            "convert": ("dcm2niix", "dcm2niix → NIfTI + JSON (-b y)"),
            "headers": ("dcm2niix_headers", "dcm2niix -b o (headers → JSON, no NIfTI)"),
            "search": ("dcm2niix_search", "dcm2niix -q y (find DICOM files only)"),
        }
        super().__init__(*labels[mode])
        self.mode = mode

    def command(self, case: Case, out: Path) -> list[str]:
        out.mkdir(parents=True, exist_ok=True)
        exe = str(VENV_BIN / "dcm2niix")
        if self.mode == "search":
            return [exe, "-q", "y", str(case.path)]
        bids = "y" if self.mode == "convert" else "o"
        # the default name (%f_%p_%t_%s) is the same for all 50 synthetic series (one series
        # number, one date) and dcm2niix gives up after 26 suffixes (exit 8): add the series UID
        fmt = "%p_%s_%j"
        return [exe, "-z", "n", "-b", bids, "-f", fmt, "-o", str(out), str(case.path)]

    def inspect(self, case: Case, out: Path, run: Run) -> dict[str, Any]:
        info: dict[str, Any] = {"returncode": run.returncode}
        if self.mode == "search":
            m = re.search(r"Found (\d+) DICOM", run.stdout + run.stderr)
            info["dicom_files_found"] = int(m.group(1)) if m else None
            return info
        niis = sorted(out.glob("*.nii"))
        info["nifti_files"] = len(niis)
        info["json_files"] = len(list(out.glob("*.json")))
        info["output_bytes"] = tree_bytes(out)[0] - tree_bytes(out / "log")[0]
        return info

    def extra(self, runs: list[Run]) -> dict[str, Any]:
        return native_time(runs)


class IndexOnly(Tool):
    """``voxelhub.dicom.index.index(paths, workers=N, progress=False)`` in a fresh process."""

    def __init__(self, workers: int) -> None:
        super().__init__(f"index_w{workers}", f"voxelhub index(workers={workers})")
        self.workers = workers

    def command(self, case: Case, out: Path) -> list[str]:
        return [sys.executable, "-c", INDEX_SCRIPT, str(self.workers), *map(str, case.sources)]

    def inspect(self, case: Case, out: Path, run: Run) -> dict[str, Any]:
        return dict(json.loads(run.stdout.strip().splitlines()[-1]))

    def extra(self, runs: list[Run]) -> dict[str, Any]:
        reports = [json.loads(r.stdout.strip().splitlines()[-1]) for r in runs]
        index_s = [r["index_s"] for r in reports]
        median = statistics.median(index_s)
        return {
            "index_s": [round(t, 4) for t in index_s],
            "index_median_s": round(median, 4),
            "import_median_s": round(statistics.median(r["import_s"] for r in reports), 4),
            "files_per_s_index": round(reports[0]["files"] / median, 1),
        }


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


def compile_package() -> None:
    """Byte-compile voxelhub as ``pip install`` does: the runs measure an installed package,
    not Python compiling sources that changed since their .pyc (each run would, again and
    again, where PYTHONDONTWRITEBYTECODE is set, as in this project's shells)."""
    import voxelhub

    package = Path(voxelhub.__file__).parent
    # not checked: a module someone is editing may not compile; it is then not imported here
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=False)


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
    runs, outputs = round_robin(case, tools, repeat, work, env)
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
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "repeat": repeat,
        "tools": results,
    }


def round_robin(
    case: Case, tools: list[Tool], repeat: int, work: Path, env: dict[str, str]
) -> tuple[dict[str, list[Run]], dict[str, dict[str, Any]]]:
    """One untimed warm-up per tool, then ``repeat`` timed rounds over all tools in turn."""
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
            if run.returncode not in tool.ok_codes:
                raise SystemExit(
                    f"{tool.label} failed on {case.label} (exit {run.returncode}):\n"
                    f"{' '.join(tool.command(case, out))}\n{run.stdout}\n{run.stderr}"
                )
            if rnd == 0:
                outputs[tool.key] = tool.inspect(case, out, run)
            else:
                runs[tool.key].append(run)
            shutil.rmtree(out, ignore_errors=True)
    return runs, outputs


def summarize_files(case: Case, runs: list[Run]) -> dict[str, Any]:
    """Wall time, files/s and memory for a many-file input (no single volume to compare with)."""
    walls = [r.wall_s for r in runs]
    median = statistics.median(walls)
    return {
        "wall_s": [round(w, 4) for w in walls],
        "wall_median_s": round(median, 4),
        "wall_min_s": round(min(walls), 4),
        "files_per_s": round(case.files / median, 1),
        "input_mb_per_s": round(case.input_bytes / 1e6 / median, 1),
        "peak_rss_mib": round(max(r.maxrss_mib for r in runs), 1),
        "tree_peak_pss_mib": round(max(r.tree_peak_mib for r in runs), 1),
        "max_processes": max(r.max_processes for r in runs),
        "returncodes": sorted({r.returncode for r in runs}),
    }


def run_files_case(
    case: Case, tools: list[Tool], repeat: int, work: Path, env: dict[str, str], ref: str
) -> dict[str, Any]:
    """The archive and header-indexing parts: many files, many series."""
    print(
        f"\n== {case.label}: {case.files} files, {case.input_bytes / 1e6:.1f} MB "
        f"({', '.join(map(str, case.sources))})",
        flush=True,
    )
    for src in case.sources:
        read_input(src)
    runs, outputs = round_robin(case, tools, repeat, work, env)
    results: dict[str, Any] = {}
    for tool in tools:
        results[tool.key] = {"label": tool.label, **summarize_files(case, runs[tool.key])}
        results[tool.key].update(tool.extra(runs[tool.key]))
        results[tool.key]["output"] = outputs[tool.key]
    base = results.get(ref)
    for res in results.values():
        if base:
            res["time_x_dcm2niix"] = round(res["wall_median_s"] / base["wall_median_s"], 2)
    return {
        "label": case.label,
        "path": str(case.path),
        "inputs": [str(p) for p in case.sources],
        "note": case.note,
        "files": case.files,
        "input_mb": round(case.input_bytes / 1e6, 2),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "repeat": repeat,
        "tools": results,
    }


def workers_scaling(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Speed with the default worker pool (one per CPU) over speed with one worker."""
    cpus = results["machine"]["cpu_count"]
    out = []
    cases = dict(results.get("cases", {}))
    if "archive" in results:
        cases["archive"] = results["archive"]
    for key, case in cases.items():
        par, seq = case["tools"].get("voxelhub"), case["tools"].get("voxelhub_w1")
        if par and seq:
            out.append(
                {
                    "what": f"voxelhub ingest: {case['label']}",
                    "case": key,
                    "workers": cpus,
                    "one_worker_s": seq["wall_median_s"],
                    "n_workers_s": par["wall_median_s"],
                    "speedup": round(seq["wall_median_s"] / par["wall_median_s"], 2),
                }
            )
    idx = results.get("index_rate", {}).get("tools", {})
    if "index_w1" in idx and "index_w2" in idx:
        one, two = idx["index_w1"]["index_median_s"], idx["index_w2"]["index_median_s"]
        out.append(
            {
                "what": "voxelhub.dicom.index.index() over the archive (in-process time)",
                "case": "index",
                "workers": 2,
                "one_worker_s": one,
                "n_workers_s": two,
                "speedup": round(one / two, 2),
            }
        )
    return out


def measure_imports(
    repeat: int, env: dict[str, str], work: Path, first_input: Path | None = None
) -> dict[str, Any]:
    """The CLI's fixed cost: interpreter start-up plus the imports before the first file is read
    (``IMPORT_SCRIPT``), and, given an input folder, ``voxelhub ingest`` run until it opens its
    first input file (``FIRST_READ_SCRIPT``: exit 0 there, 3 if the store existed already)."""
    first: list[Run] = []
    if first_input is not None:
        for i in range(repeat + 1):
            out = work / "runs" / "first_read" / str(i)
            store = out / "store"
            shutil.rmtree(out, ignore_errors=True)
            run = measure(
                [sys.executable, "-c", FIRST_READ_SCRIPT, str(first_input), str(store)], env, out
            )
            if run.returncode != 0:
                raise RuntimeError(f"first-read run exited {run.returncode}: {run.stderr[-500:]}")
            first.append(run)
        first = first[1:]
    runs = [
        measure([sys.executable, "-c", IMPORT_SCRIPT], env, work / "runs" / "imports" / str(i))
        for i in range(repeat + 1)
    ][1:]
    walls = [r.wall_s for r in runs]
    bare = [
        measure([sys.executable, "-c", "pass"], env, work / "runs" / "python" / str(i))
        for i in range(repeat + 1)
    ][1:]
    return {
        "wall_median_s": round(statistics.median(walls), 4),
        "wall_min_s": round(min(walls), 4),
        "peak_rss_mib": round(max(r.maxrss_mib for r in runs), 1),
        "python_only_median_s": round(statistics.median(r.wall_s for r in bare), 4),
        "python_only_rss_mib": round(max(r.maxrss_mib for r in bare), 1),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "import_script": IMPORT_SCRIPT,
        "repeat": repeat,
        "importtime": import_times(repeat, env, work),
        **(
            {
                "first_read_input": str(first_input),
                "first_read_median_s": round(statistics.median(r.wall_s for r in first), 4),
                "first_read_min_s": round(min(r.wall_s for r in first), 4),
                "first_read_rss_mib": round(max(r.maxrss_mib for r in first), 1),
            }
            if first
            else {}
        ),
    }


def import_times(repeat: int, env: dict[str, str], work: Path, top: int = 10) -> dict[str, Any]:
    """``python -X importtime -c IMPORT_SCRIPT``: the imports with the largest cumulative time
    (median over ``repeat`` runs after one warm-up), with their self time and nesting depth."""
    per_run: list[dict[str, tuple[int, int, int]]] = []
    for i in range(repeat + 1):
        run = measure(
            [sys.executable, "-X", "importtime", "-c", IMPORT_SCRIPT],
            env,
            work / "runs" / "importtime" / str(i),
        )
        table: dict[str, tuple[int, int, int]] = {}
        for line in run.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            if m:
                depth = (len(m.group(3)) - 1) // 2
                table[m.group(4)] = (int(m.group(1)), int(m.group(2)), depth)
        if i:
            per_run.append(table)
    names = set.intersection(*(set(t) for t in per_run))

    def med(name: str, k: int) -> float:
        return statistics.median(t[name][k] for t in per_run) / 1e6

    ranked = sorted(names, key=lambda n: med(n, 1), reverse=True)[:top]
    return {
        "command": f'python -X importtime -c "{IMPORT_SCRIPT}"',
        "modules": len(names),
        "self_total_s": round(sum(med(n, 0) for n in names), 4),
        "top_cumulative": [
            {
                "module": n,
                "cumulative_s": round(med(n, 1), 4),
                "self_s": round(med(n, 0), 4),
                "depth": per_run[0][n][2],
            }
            for n in ranked
        ],
    }


# ----------------------------------------------------------------------------- profile


def py_spy_path(given: str | None) -> str | None:
    for cand in (given, shutil.which("py-spy"), "/tmp/pyspy/bin/py-spy"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


# leaf frames of threads that are blocked (py-spy's idle detection misses waits in C code):
# thread-pool workers in queue.get, asyncio's loop in select, locks and conditions
WAIT_LEAVES = (
    "_worker (concurrent/futures/thread.py)",
    "EpollSelector.select (selectors.py)",
    "Condition.wait (threading.py)",
    "Event.wait (threading.py)",
    "Thread.join (threading.py)",
    "_wait_for_tstate_lock (threading.py)",
    "wait (multiprocessing/connection.py)",
    "_recv (multiprocessing/connection.py)",
    "_poll (multiprocessing/connection.py)",
    "Future.result (concurrent/futures/_base.py)",
)
# frames on (nearly) every stack, left out of the *total* ranking: the entry script, threads,
# the import machinery, and the fork chain that every pool worker's stack starts with
WRAPPER_FRAMES = (
    "<module> (voxelhub)",
    "(threading.py)",
    "<frozen importlib",
    "(multiprocessing/",
    "ProcessPoolExecutor.submit ",
    "ProcessPoolExecutor._start_executor_manager_thread ",
    "ProcessPoolExecutor._adjust_process_count ",
    "ProcessPoolExecutor._spawn_process ",
    "ProcessPoolExecutor._launch_processes ",
)


def _frame_name(frame: str) -> str:
    """``func (path/file.py:12)`` → ``func (path/file.py)``."""
    return re.sub(r":\d+\)$", ")", frame.strip())


def profile_one(
    label: str, case: Case, work: Path, env: dict[str, str], py_spy: str | None, top: int = 15
) -> dict[str, Any]:
    """Sample one ``voxelhub ingest`` (default workers, all processes) with py-spy at 250 Hz;
    without py-spy, cProfile the parent process only."""
    out = work / "runs" / "profile" / case.key
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for src in case.sources:
        read_input(src)
    ingest = [str(VENV_BIN / "voxelhub"), "ingest", *map(str, case.sources)]
    ingest += ["--store", str(out / "store"), "--quiet"]
    if py_spy:
        raw = out / "pyspy.txt"
        cmd = [py_spy, "record", "--rate", "250", "--subprocesses", "--nolineno"]
        cmd += ["--format", "raw", "--output", str(raw), "--", *ingest]
    else:
        raw = out / "cprofile.prof"
        cmd = [sys.executable, "-m", "cProfile", "-o", str(raw), *ingest]
    print(f"  profiling {label}: {' '.join(cmd)}", flush=True)
    run = measure(cmd, env, out / "log")
    if run.returncode not in (0, 1):
        raise SystemExit(f"profile of {label} failed ({run.returncode}):\n{run.stderr}")
    result: dict[str, Any] = {
        "label": label,
        "wall_s_under_profiler": round(run.wall_s, 3),
        "ingest_returncode": run.returncode,
        "command": " ".join(["py-spy", *cmd[1:]] if py_spy else ["python", *cmd[1:]]).replace(
            str(work), "WORK"
        ),
    }
    if py_spy:
        self_n: dict[str, int] = {}
        total_n: dict[str, int] = {}
        procs: dict[str, int] = {}
        busy_n: dict[str, int] = {}
        samples = in_imports = waiting = 0
        for line in raw.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            if frames[0].startswith("process "):
                frames.pop(0)
            names = [_frame_name(f) for f in frames if f.strip()]
            if not names:
                continue
            samples += n
            # py-spy files the forked pool workers under the parent's pid; their stacks go on
            # from the fork inside ProcessPoolExecutor.submit to _process_worker
            kind = "workers" if any(x.startswith("_process_worker ") for x in names) else "main"
            procs[kind] = procs.get(kind, 0) + n
            if any(name.startswith("_find_and_load ") for name in names):
                in_imports += n
            leaf = names[-1]
            self_n[leaf] = self_n.get(leaf, 0) + n
            if leaf in WAIT_LEAVES:
                waiting += n
            else:
                busy_n[leaf] = busy_n.get(leaf, 0) + n
            for name in set(names):
                if not any(w in name for w in WRAPPER_FRAMES):
                    total_n[name] = total_n.get(name, 0) + n

        def ranked(table: dict[str, int]) -> list[dict[str, Any]]:
            best = sorted(table.items(), key=lambda kv: kv[1], reverse=True)[:top]
            return [{"function": k, "pct": round(100 * v / samples, 1)} for k, v in best]

        result.update(
            profiler="py-spy 250 Hz, all processes (--subprocesses)",
            samples=samples,
            samples_by_process=procs,
            imports_pct=round(100 * in_imports / samples, 1) if samples else None,
            waiting_pct=round(100 * waiting / samples, 1) if samples else None,
            top_self=ranked(self_n),
            top_self_busy=ranked(busy_n),
            top_total=ranked(total_n),
        )
    else:
        import pstats

        stats = pstats.Stats(str(raw))
        total = stats.total_tt  # type: ignore[attr-defined]
        rows = stats.stats  # type: ignore[attr-defined]

        def fn(key: tuple[str, int, str]) -> str:
            return f"{key[2]} ({Path(key[0]).name})"

        by_self = sorted(rows.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
        by_cum = sorted(rows.items(), key=lambda kv: kv[1][3], reverse=True)[:top]
        result.update(
            profiler="cProfile, parent process only (py-spy not found)",
            samples=None,
            top_self=[{"function": fn(k), "pct": round(100 * v[2] / total, 1)} for k, v in by_self],
            top_total=[{"function": fn(k), "pct": round(100 * v[3] / total, 1)} for k, v in by_cum],
        )
    shutil.rmtree(out / "store", ignore_errors=True)
    return result


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
            f"{_when(results, case)}"
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


FILE_COLUMNS = [
    ("tool", "tool"),
    ("median", "median s"),
    ("min", "min s"),
    ("fps", "files/s"),
    ("mbs", "input MB/s"),
    ("rss", "peak RSS MiB"),
    ("tree", "tree PSS MiB"),
    ("procs", "procs"),
    ("vsd", "× dcm2niix"),
]


def _md_table(columns: list[tuple[str, str]], rows: list[dict[str, str]]) -> list[str]:
    out = ["| " + " | ".join(h for _, h in columns) + " |"]
    out.append("|" + "|".join("---" if k in ("tool", "what") else "---:" for k, _ in columns) + "|")
    out += ["| " + " | ".join(r[k] for k, _ in columns) + " |" for r in rows]
    return out


def _file_rows(part: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for res in part["tools"].values():
        rows.append(
            {
                "tool": res["label"],
                "median": f"{res['wall_median_s']:.2f}",
                "min": f"{res['wall_min_s']:.2f}",
                "fps": f"{res['files_per_s']:.0f}",
                "mbs": f"{res['input_mb_per_s']:.1f}",
                "rss": f"{res['peak_rss_mib']:.0f}",
                "tree": f"{res['tree_peak_pss_mib']:.0f}",
                "procs": str(res["max_processes"]),
                "vsd": f"{res['time_x_dcm2niix']:.1f}" if "time_x_dcm2niix" in res else "",
            }
        )
    return rows


def _when(results: dict[str, Any], part: dict[str, Any]) -> str:
    date = part.get("date")
    reruns = [r["date"] for r in results.get("partial_runs", [])]
    if not date or not any(r <= date for r in reruns):  # measured by the full run
        return ""
    return f" (measured {date}, repeat {part.get('repeat', '?')})"


def extra_markdown(results: dict[str, Any]) -> list[str]:
    """Archive, header indexing, workers scaling and fixed-cost sections of the table block."""
    out: list[str] = []
    arch = results.get("archive")
    if arch:
        out += [
            f"**{arch['label']} — {arch['files']} files, {arch['input_mb']:.1f} MB{_when(results, arch)}**",
            "",
            *_md_table(FILE_COLUMNS, _file_rows(arch)),
            "",
        ]
        vh, d2n = arch["tools"].get("voxelhub"), arch["tools"].get("dcm2niix")
        if vh:
            o = vh["output"]
            out.append(
                f"- VoxelHub: one `voxelhub ingest SHARED SYNTH --store NEW --quiet`, exit code "
                f"{o.get('returncode')} (1 = some files rejected: the shared data's Philips "
                f"DIRFILE files are not images); {o.get('volumes')} volumes written, store "
                f"{o.get('store_bytes', 0) / 1e6:.1f} MB; summary: "
                f"`{' '.join(o.get('summary', '').split())[:300]}`"
            )
        if d2n:
            o = d2n["output"]
            out.append(
                "- dcm2niix: one `dcm2niix -z n -b y -f %p_%s_%j -o OUT PARENT` on a folder "
                f"holding both inputs as symlinks; {o.get('nifti_files')} NIfTI + {o.get('json_files')} JSON "
                f"files, {o.get('output_bytes', 0) / 1e6:.1f} MB"
                + (
                    f"; native binary {d2n['native_conversion_median_s']:.2f} s of its "
                    f"{d2n['wall_median_s']:.2f} s wall"
                    if "native_conversion_median_s" in d2n
                    else ""
                )
            )
        if vh and "time_x_dcm2niix" in vh:
            out.append(
                f"- VoxelHub / dcm2niix wall time on the archive: {vh['time_x_dcm2niix']:.2f}×"
            )
        out.append("")
    idx = results.get("index_rate")
    if idx:
        out += [
            f"**Header indexing over the archive — {idx['files']} files{_when(results, idx)}**",
            "",
            "| tool | index s (in process) | files/s (in process) | wall s | files/s (wall) "
            "| peak RSS MiB | tree PSS MiB | procs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for res in idx["tools"].values():
            inproc = res.get("index_median_s", res.get("native_conversion_median_s"))
            fps = idx["files"] / inproc if inproc else None
            out.append(
                f"| {res['label']} | {f'{inproc:.2f}' if inproc is not None else '–'}"
                f" | {f'{fps:.0f}' if fps else '–'} | {res['wall_median_s']:.2f} "
                f"| {res['files_per_s']:.0f} | {res['peak_rss_mib']:.0f} "
                f"| {res['tree_peak_pss_mib']:.0f} | {res['max_processes']} |"
            )
        out += [
            "",
            "- VoxelHub: `index(paths, workers=N, progress=False)` in a fresh process; *index s* "
            "is the call alone (imports excluded), *wall* the whole process.  dcm2niix has no "
            "pure header-index mode: `-b o` parses every header, sorts the series and writes "
            "only the JSON sidecars (its *index s* column is the binary's own 'Conversion "
            "required' time); `-q y` only searches the tree for DICOM files.",
            "",
        ]
    scaling = workers_scaling(results)
    if scaling:
        out += [
            "**Workers scaling** (speed-up = N-worker speed / 1-worker speed = 1-worker time / "
            f"N-worker time; {results['machine']['cpu_count']} CPUs)",
            "",
            "| what | N workers | 1 worker s | N workers s | speed-up |",
            "|---|---:|---:|---:|---:|",
        ]
        out += [
            f"| {r['what']} | {r['workers']} | {r['one_worker_s']:.2f} | {r['n_workers_s']:.2f} "
            f"| {r['speedup']:.2f}× |"
            for r in scaling
        ]
        out.append("")
    imp = results.get("voxelhub_import")
    if imp and "importtime" in imp:
        it = imp["importtime"]
        out += [
            f"**CLI fixed cost**{_when(results, imp)}: `python -c pass` "
            f"{imp['python_only_median_s']:.2f} s ({imp['python_only_rss_mib']:.0f} MiB); "
            f'`python -c "{imp.get("import_script", IMPORT_SCRIPT)}"` '
            f"{imp['wall_median_s']:.2f} s ({imp['peak_rss_mib']:.0f} MiB): the modules every "
            "`voxelhub ingest` loads before the first file is read"
            + (
                f"; `voxelhub ingest --workers 1` from fork until it opens its first input file "
                f"(an audit hook ends it there; the store is not created yet) "
                f"{imp['first_read_median_s']:.2f} s (min {imp['first_read_min_s']:.2f} s; "
                f"target ≤ 0.25 s: {'meets' if imp['first_read_median_s'] <= 0.25 else 'MISSES'})"
                if "first_read_median_s" in imp
                else ""
            )
            + f".  `{it['command']}`, top 10 by cumulative time (median of "
            f"the runs; {it['modules']} modules, {it['self_total_s']:.2f} s of self time in all):",
            "",
            "| module | depth | cumulative s | self s |",
            "|---|---:|---:|---:|",
        ]
        out += [
            f"| `{m['module']}` | {m['depth']} | {m['cumulative_s']:.3f} | {m['self_s']:.3f} |"
            for m in it["top_cumulative"]
        ]
        out.append("")
    return out


def profile_markdown(results: dict[str, Any], top: int = 10) -> str:
    prof = results.get("profile")
    if not prof:
        return "No profile in the results JSON yet: run `--case profile`.\n"
    out = [
        f"Profiled {prof['date']} with `.venv/bin/python benchmarks/ingest.py --case profile` "
        f"({prof['profiler']}).  Each ingest runs once, warm page cache, default workers.  "
        "*self* = samples with the function on top of the stack, blocked waits left out "
        "(a thread-pool worker in `queue.get`, asyncio's `select`, `Condition.wait`, …: "
        "py-spy's idle filter misses waits in C; their share is given, the JSON has the "
        "unfiltered `top_self`); *total* = samples with the function anywhere in the stack, "
        "without the frames on every stack (the entry script, `threading`, the import "
        "machinery, the fork chain at the root of each pool worker's stack).  Both in % of all samples of all processes; a sample is one stack of one "
        "thread, so 2 CPUs give up to 2 × 250 samples a second plus waiting threads.",
        "",
    ]
    for part in prof["runs"].values():
        out += [
            f"**{part['label']}** — {part['wall_s_under_profiler']:.1f} s under the profiler, "
            f"{part.get('samples') or '–'} samples"
            + (
                f" ({', '.join(f'{k} {v}' for k, v in part['samples_by_process'].items())})"
                if part.get("samples_by_process")
                else ""
            )
            + (
                f"; {part['imports_pct']:.1f} % of the samples are inside imports "
                f"(`_find_and_load`), {part['waiting_pct']:.1f} % are blocked waits"
                if part.get("waiting_pct") is not None
                else ""
            ),
            "",
            f"`{part['command']}`",
            "",
            "| # | function (self, not waiting) | self % | function (total) | total % |",
            "|---:|---|---:|---|---:|",
        ]
        own = part.get("top_self_busy", part["top_self"])
        for i, (a, b) in enumerate(zip(own[:top], part["top_total"][:top], strict=False)):
            out.append(
                f"| {i + 1} | `{a['function']}` | {a['pct']:.1f} | `{b['function']}` | {b['pct']:.1f} |"
            )
        out.append("")
    return "\n".join(out)


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
    out += ["", *extra_markdown(results), profile_markdown(results)]
    return "\n".join(out)


def markdown_report(results: dict[str, Any]) -> str:
    m, v = results["machine"], results["versions"]
    out = [
        f"Run {results['date']} with `{results['command']}` "
        f"(repeat {results['repeat']}{', quick' if results['quick'] else ''})"
        + (
            f"; 1-minute load average {results['load_average']['start'][0]:.2f} at the start, "
            f"{results['load_average']['end'][0]:.2f} at the end"
            if results.get("load_average")
            else ""
        )
        + ".",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs ({m['cpu_model']}), "
        f"{m['memory_gib']} GiB.  ",
        f"Versions: voxelhub {v['voxelhub']}, pydicom {v['pydicom']}, zarr {v['zarr']}, "
        f"numcodecs {v['numcodecs']}, SimpleITK {v['SimpleITK']}, {v['dcm2niix']}, "
        f"Python {v['python']}.",
        "",
    ]
    for part in results.get("partial_runs", []):
        load = part.get("load_average")
        out[-1:-1] = [
            f"Rerun {part['date']}: {', '.join(part['parts'])} with `{part['command']}`"
            + (
                f" (1-minute load average {load['start'][0]:.2f} at the start, "
                f"{load['end'][0]:.2f} at the end: the 2 cores are shared with other work)"
                if load
                else ""
            )
            + ".  "
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
            f"- VoxelHub fixed cost per run (interpreter start-up + "
            f"`{imp.get('import_script', IMPORT_SCRIPT)}`): {imp['wall_median_s']:.2f} s, "
            f"{imp['peak_rss_mib']:.0f} MiB"
            + (
                f"; `voxelhub ingest` until its first file is read "
                f"{imp['first_read_median_s']:.2f} s"
                if "first_read_median_s" in imp
                else ""
            )
        )
    out += [f"- {note}" for note in results["notes"]]
    extra = extra_markdown(results)
    if extra:
        out += ["", *extra]
    return "\n".join(out).rstrip("\n") + "\n"


def refresh_readme(results: dict[str, Any]) -> bool:
    """Replace the generated block of benchmarks/README.md; False if its markers are missing."""
    if not README.exists():
        return False
    text = README.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        return False
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    text = f"{head}{TABLE_START}\n{markdown_report(results)}{TABLE_END}{tail}"
    if PROFILE_START in text and PROFILE_END in text:
        head, rest = text.split(PROFILE_START, 1)
        _, tail = rest.split(PROFILE_END, 1)
        text = f"{head}{PROFILE_START}\n{profile_markdown(results)}{PROFILE_END}{tail}"
    README.write_text(text)
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
        "--case",
        action="append",
        choices=("all", *PARTS),
        help="part to run (repeatable; default all): ct = synthetic + phantom CT, archive = "
        "shared DICOM + 5,000-file synthetic archive, index = header indexing rate, fixed = CLI "
        "fixed cost, profile = py-spy profile; parts run alone are merged into the saved JSON",
    )
    parser.add_argument(
        "--py-spy", default=None, help="py-spy executable (default: PATH, /tmp/pyspy)"
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the markdown table of the results JSON and exit (no benchmark run)",
    )
    parser.add_argument(
        "--update-readme",
        action="store_true",
        help="with --markdown: also rewrite the tables in benchmarks/README.md",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"results JSON (default {RESULTS.relative_to(REPO)}; --quick: WORK/ingest.json)",
    )
    args = parser.parse_args(argv)

    if args.markdown:
        saved = json.loads((args.output or RESULTS).read_text())
        print(markdown_report(saved), end="")
        print("\n" + profile_markdown(saved), end="")
        if args.update_readme and not refresh_readme(saved):
            print(f"no {TABLE_START} … {TABLE_END} block in {README}", file=sys.stderr)
            return 1
        return 0
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    parts = set(PARTS) if not args.case or "all" in args.case else set(args.case)

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
        shared_dicom = shared_dir() / "data" / "dicom"
        phantom = shared_dicom / "ct_philips_ingenuity_phantom"
        output = args.output or (work / "ingest.json" if args.quick else RESULTS)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        command = " ".join([".venv/bin/python", "benchmarks/ingest.py", *(argv or sys.argv[1:])])
        load_start = [round(x, 2) for x in os.getloadavg()]
        compile_package()
        results: dict[str, Any] = {}
        if parts != set(PARTS) and output.exists():
            results = json.loads(output.read_text())  # merge this run's parts into it
            reruns = [r for r in results.get("partial_runs", []) if r["parts"] != sorted(parts)]
            reruns.append({"date": now, "command": command, "parts": sorted(parts)})
            results["partial_runs"] = reruns
        else:
            results.update(
                {"date": now, "command": command, "repeat": args.repeat, "quick": args.quick}
            )
        results.update({"benchmark": "ingest", "machine": machine(), "versions": versions()})
        results.setdefault("cases", {})
        print(
            f"machine: {results['machine']['platform']}, {results['machine']['cpu_count']} CPUs;"
            f" parts: {', '.join(p for p in PARTS if p in parts)}",
            flush=True,
        )
        if "ct" in parts:
            cases = [
                Case(
                    "synthetic",
                    f"synthetic CT ({slices} slices)",
                    make_synthetic(work, slices),
                    "tests/dicom_factory.py write_series: uniform random noise in [0, 3000), "
                    "the worst case for lossless compression (real CT compresses far better)",
                )
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
                print(f"warning: {phantom} not found, phantom case skipped", file=sys.stderr)
            results["cases"] = {}
            # exit 1 = some file rejected: the phantom folder holds a Philips DIRFILE (not an
            # image) beside its 140 slices; the volume is still written and checked for shape
            ok = (0, 1)
            tools: list[Tool] = [VoxelHub(None, ok), VoxelHub(1, ok), Dcm2niix(), SimpleITK()]
            for case in cases:
                results["cases"][case.key] = run_case(case, tools, args.repeat, work, env)
        need_archive = parts & {"archive", "index", "profile"}
        archive = (
            archive_case(work, shared_dicom) if need_archive and shared_dicom.is_dir() else None
        )
        if need_archive and archive is None:
            print(f"warning: {shared_dicom} not found: archive parts skipped", file=sys.stderr)
        if "archive" in parts and archive:
            tools = [VoxelHub(None, (0, 1)), VoxelHub(1, (0, 1)), Dcm2niixTree("convert")]
            results["archive"] = run_files_case(archive, tools, args.repeat, work, env, "dcm2niix")
        if "index" in parts and archive:
            idx_case = Case(
                "index",
                archive.label,
                archive.path,
                archive.note,
                files=archive.files,
                inputs=archive.inputs,
                input_bytes=archive.input_bytes,
            )
            tools = [IndexOnly(1), IndexOnly(2), Dcm2niixTree("headers"), Dcm2niixTree("search")]
            part = run_files_case(idx_case, tools, args.repeat, work, env, "dcm2niix_headers")
            part["label"] = "header indexing over the archive"
            results["index_rate"] = part
        if "fixed" in parts:
            results["voxelhub_import"] = measure_imports(
                args.repeat, env, work, phantom if phantom.is_dir() else None
            )
        if "profile" in parts:
            py_spy = py_spy_path(args.py_spy)
            runs: dict[str, Any] = {}
            if phantom.is_dir():
                ph = Case("phantom", "ct_philips_ingenuity_phantom", phantom, "")
                runs["phantom"] = profile_one(ph.label, ph, work, env, py_spy)
            if archive:
                runs["archive"] = profile_one(archive.label, archive, work, env, py_spy)
            results["profile"] = {
                "date": now,
                "profiler": next(iter(runs.values()))["profiler"] if runs else "",
                "runs": runs,
            }
        imports = results.get("voxelhub_import")
        if imports:
            for case in results["cases"].values():
                for key, res in case["tools"].items():
                    if key.startswith("voxelhub"):
                        above = res["peak_rss_mib"] - imports["peak_rss_mib"]
                        res["peak_rss_above_imports_x_volume"] = round(
                            above / case["volume_mib"], 2
                        )
        true = shutil.which("true") or "/bin/true"
        floor = measure([true], env, work / "runs" / "floor").maxrss_mib
        results["rss_floor_mib"] = round(floor, 1)
        results["workers_scaling"] = workers_scaling(results)
        results["notes"] = notes_for(results, phantom)
        # other work on a shared machine slows every tool alike and hides parallel gains
        load = {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]}
        if "partial_runs" in results and parts != set(PARTS):
            results["partial_runs"][-1]["load_average"] = load
        else:
            results["load_average"] = load
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print("\n" + text_report(results))
        print(f"\nresults: {output}")
        if output.resolve() == RESULTS.resolve() and refresh_readme(results):
            print(f"tables refreshed in {README}")
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


def notes_for(results: dict[str, Any], phantom: Path) -> list[str]:
    notes = [
        "synthetic pixels are uniform random noise: a worst case for compression and for "
        "store size; the phantom shows real-data ratios",
        "wall time includes process start-up and imports; inputs are in the page cache; "
        "voxelhub's modules are byte-compiled before the runs, as an installed package is "
        "(a source edited since its .pyc is otherwise recompiled by every run when "
        "PYTHONDONTWRITEBYTECODE is set)",
        "peak RSS = the tool's own ru_maxrss (os.wait4); for VoxelHub's worker pool that is "
        "the largest single process; tree PSS = summed proportional set size of the whole "
        "process tree, sampled every 20 ms; procs = most processes seen at once",
        "MB/s = pixel payload (slices × rows × columns × 2 bytes, 1e6 bytes/MB) / median wall",
        "dcm2niix is the PyPI package's command: a Python entry point around the native "
        "binary, so its wall time includes one Python start-up; the binary's own "
        "'Conversion required' time is recorded as native_conversion_median_s",
    ]
    if "phantom" not in results.get("cases", {}):
        notes.append(f"phantom skipped: {phantom} not found (set VOXELHUB_SHARED)")
    if "archive" in results or "index_rate" in results:
        notes.append(
            "archive / indexing: files/s = every file under the inputs (DICOM or not) / median "
            "wall; input MB/s = their bytes / median wall"
        )
    notes.append(
        f"peak RSS floor of the method: {results['rss_floor_mib']:.1f} MiB "
        "(`true` run through the launcher)"
    )
    for case in results.get("cases", {}).values():
        if case["shape_mismatches"]:
            notes.append(
                f"{case['label']}: output shapes differ from the input "
                f"{case['shape']}: {case['shape_mismatches']}"
            )
    return notes


if __name__ == "__main__":
    sys.exit(main())
