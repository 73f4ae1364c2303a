"""Crash safety and bounded memory of a real ingest, each in its own subprocess.

Crashes are real: the ingest runs in a child process that is SIGKILLed at a chosen moment,
either from outside (the parent polls the store and kills when the temporary tree reaches a
given state) or from inside (a hook at an exact line of the write path kills its own process).
After every crash the store and its catalog must agree, a re-run must complete and verify, and
``Location.clean_temporary`` must remove what the crash left.

Memory is measured, not capped: the peak RSS of an ingest subprocess (``os.wait4``) minus the
peak RSS of a subprocess that only imports voxelhub must stay well below the volume's size, and
must not grow with it (the writer streams slabs).
"""

from __future__ import annotations

import inspect
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

import voxelhub
from tests.dicom_factory import write_series
from voxelhub.fsck import check_store
from voxelhub.store import ngff
from voxelhub.store.location import open_location
from voxelhub.store.writer import content_checksum

pytestmark = pytest.mark.slow

PROJECT = "crash"
CRASH_SLICES = 200
CRASH_SIDE = 256

# -- helpers ----------------------------------------------------------------------------------


def _committed(store: Path) -> set[str]:
    """Volume folders under projects/, as store-relative paths."""
    return {p.relative_to(store).as_posix() for p in store.glob("projects/*/*/*.ome.zarr")}


def _catalog_rows(store: Path) -> list[dict]:
    cat = voxelhub.open_catalog(store)
    try:
        return cat.series().to_dict("records")
    finally:
        cat.close()


def _assert_store_agrees_with_catalog(store: Path, *, unlisted_ok: bool = False) -> list[dict]:
    """Every listed volume is there; unlisted trees only where a crash may leave one.

    A crash between moving a finished tree into place and committing its catalog row leaves a
    complete, verified tree no reader can reach; ``voxelhub fsck --repair`` collects it.
    """
    rows = _catalog_rows(store)
    listed = {r["store_path"] for r in rows}
    on_disk = _committed(store)
    if not unlisted_ok:
        assert not on_disk - listed, f"volume folders the catalog does not list: {on_disk - listed}"
    missing = {p for p in listed if not (store / p).is_dir()}
    assert not missing, f"catalog lists volumes whose store path is missing: {missing}"
    return rows


def _collect_garbage(store: Path) -> list[str]:
    cat = voxelhub.open_catalog(store)
    try:
        check = check_store(cat.location, cat, repair=True, verify=True, min_age_seconds=0)
    finally:
        cat.close()
    assert not check.missing and not check.corrupt, check.summary()
    assert check.consistent, check.summary()
    return check.removed


def _leftovers(store: Path) -> set[str]:
    tmp = store / ".tmp"
    return {p.name for p in tmp.iterdir()} if tmp.is_dir() else set()


def _clean_temporary(store: Path) -> list[str]:
    location = open_location(store)
    params = inspect.signature(location.clean_temporary).parameters
    # a minimum-age guard (if the API grows one) must not protect this test's fresh leftovers
    return location.clean_temporary(**{name: 0 for name in params if "age" in name})


def _assert_verifies(store: Path, row: dict, expected: np.ndarray) -> None:
    level0 = zarr.open_group(store / row["store_path"], mode="r")["0"]
    assert isinstance(level0, zarr.Array)
    assert content_checksum(level0) == row["checksum"]
    np.testing.assert_array_equal(level0[:], expected)


def _rerun_and_verify(folder: Path, store: Path, expected: np.ndarray) -> None:
    """After a crash: a re-run completes, verifies, and cleaning the leftovers breaks nothing."""
    leftovers = _leftovers(store)
    report = voxelhub.ingest(folder, store, project=PROJECT, workers=1, progress=False)
    assert not report.failed, report.summary()
    assert len(report.written) + len(report.unchanged) == 1, report.summary()
    (row,) = _assert_store_agrees_with_catalog(store)
    assert row["slices"] == CRASH_SLICES
    _assert_verifies(store, row, expected)

    removed = {Path(p).name for p in _clean_temporary(store)}
    assert leftovers <= removed
    assert _leftovers(store) == set()
    (row,) = _assert_store_agrees_with_catalog(store)
    _assert_verifies(store, row, expected)


@pytest.fixture(scope="module")
def crash_input(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, np.ndarray]]:
    """200 × 256² CT slices: big enough that an ingest spends a second writing."""
    root = tmp_path_factory.mktemp("crash_input")
    series = write_series(
        root / "in", slices=CRASH_SLICES, rows=CRASH_SIDE, columns=CRASH_SIDE, seed=17
    )
    yield root / "in", series.volume.astype(np.int16)
    shutil.rmtree(root, ignore_errors=True)


# -- crashes from outside -----------------------------------------------------------------------

_SHARDS = math.ceil(CRASH_SLICES / ngff.SLAB_DEPTH)


def _level0_shards(store: Path) -> int:
    return len(list(store.glob(".tmp/*.ome.zarr/0/c/*/*/*")))


KILL_WHEN: dict[str, Callable[[Path], bool]] = {
    # the catalog exists (opened once the headers are indexed), nothing converted yet
    "catalog_created": lambda store: (store / "catalog.sqlite").exists(),
    # the temporary OME-Zarr was just created: no pixels yet
    "temporary_created": lambda store: any(store.glob(".tmp/*.ome.zarr")),
    # half of level 0 written
    "level0_half_written": lambda store: _level0_shards(store) >= _SHARDS // 2,
    # all of level 0 written: pyramid, metadata or verification under way
    "level0_written": lambda store: _level0_shards(store) >= _SHARDS,
}

_INGEST = (
    "import sys, voxelhub; "
    f"voxelhub.ingest(sys.argv[1], sys.argv[2], project={PROJECT!r}, workers=1, progress=False)"
)


@pytest.mark.parametrize("moment", list(KILL_WHEN))
def test_sigkill_during_ingest_leaves_a_consistent_store(
    crash_input: tuple[Path, np.ndarray], tmp_path: Path, moment: str
) -> None:
    folder, expected = crash_input
    store = tmp_path / "store"
    condition = KILL_WHEN[moment]
    proc = subprocess.Popen([sys.executable, "-c", _INGEST, str(folder), str(store)])
    try:
        deadline = time.monotonic() + 120
        while not condition(store):
            if proc.poll() is not None:
                pytest.fail(f"the ingest ended (rc {proc.returncode}) before {moment!r}")
            if time.monotonic() > deadline:
                pytest.fail(f"{moment!r} never happened")
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # what readers see right after the crash: nothing half-written, catalog and store agree
    rows = _assert_store_agrees_with_catalog(store)
    assert rows == [] and _committed(store) == set()
    if moment != "catalog_created":
        assert _leftovers(store), "the crash should have left a temporary tree"
    _rerun_and_verify(folder, store, expected)


# -- crashes at exact lines, from inside --------------------------------------------------------

_HOOKED_INGEST = """
import os, signal, sys
import voxelhub
{hook}
voxelhub.ingest(sys.argv[1], sys.argv[2], project={project!r}, workers=1, progress=False)
"""

_KILL_BEFORE_CATALOG_ROW = """
from voxelhub.catalog import Catalog
def record_volume(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
Catalog.record_volume = record_volume
"""

_KILL_BETWEEN_RENAMES = """
_rename = os.rename
def rename(src, dst, *args, **kwargs):
    src, dst = os.fspath(src), os.fspath(dst)
    if "/.tmp/" in src and src.endswith(".ome.zarr") and "/projects/" in dst:
        os.kill(os.getpid(), signal.SIGKILL)  # as the new version moves into place
    return _rename(src, dst, *args, **kwargs)
os.rename = rename
"""


def _run_hooked(hook: str, folder: Path, store: Path) -> None:
    code = _HOOKED_INGEST.format(hook=hook, project=PROJECT)
    done = subprocess.run([sys.executable, "-c", code, str(folder), str(store)], timeout=300)
    assert done.returncode == -signal.SIGKILL, "the hook never ran"


def test_sigkill_between_commit_and_catalog_row(
    crash_input: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    folder, expected = crash_input
    store = tmp_path / "store"
    _run_hooked(_KILL_BEFORE_CATALOG_ROW, folder, store)
    # the complete tree is in place but unlisted: no reader can reach it
    assert _catalog_rows(store) == [] and len(_committed(store)) == 1
    _assert_store_agrees_with_catalog(store, unlisted_ok=True)
    assert len(_collect_garbage(store)) == 1
    assert _committed(store) == set()
    _rerun_and_verify(folder, store, expected)
    assert _committed(store) == {r["store_path"] for r in _catalog_rows(store)}


def test_sigkill_while_replacing_a_volume(
    crash_input: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    folder, expected = crash_input
    store = tmp_path / "store"
    # first the series without its last file, then the whole series: a new content key, so the
    # re-ingest replaces the committed volume
    partial = tmp_path / "partial"
    partial.mkdir()
    files = sorted(folder.iterdir())
    for path in files[:-1]:
        (partial / path.name).symlink_to(path)
    first = voxelhub.ingest(partial, store, project=PROJECT, workers=1, progress=False)
    assert len(first.written) == 1, first.summary()
    (old,) = _assert_store_agrees_with_catalog(store)
    assert old["slices"] == CRASH_SLICES - 1

    _run_hooked(_KILL_BETWEEN_RENAMES, folder, store)
    # the old version is still listed and intact: versions never share a path
    (still,) = _assert_store_agrees_with_catalog(store, unlisted_ok=True)
    assert still["store_path"] == old["store_path"]
    _assert_verifies(store, still, expected[:-1])
    _rerun_and_verify(folder, store, expected)
    assert not (store / old["store_path"]).exists()  # replaced, then deleted


# -- bounded memory -----------------------------------------------------------------------------

MEM_SLICES = 1024
MEM_SMALL = 256
MEM_SIDE = 512
SLICE_BYTES = MEM_SIDE * MEM_SIDE * 2  # int16 out


def _write_ct_slices(folder: Path, n: int, side: int) -> list[Path]:
    """n uncompressed 16-bit CT slices, one in memory at a time (the factory holds them all)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uid
        ds.PatientID = "MEM-001"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame
        ds.Modality = "CT"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-180.0, -180.0, 0.7 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.Rows = ds.Columns = side
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.PixelData = rng.integers(0, 3000, size=(side, side), dtype=np.int16).tobytes()
        path = folder / f"ct{k:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def big_series(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Path]]]:
    """1024 × 512² CT slices (512 MiB of voxels), deleted after the module."""
    root = tmp_path_factory.mktemp("memory_input")
    files = _write_ct_slices(root / "ct", MEM_SLICES, MEM_SIDE)
    yield root / "ct", files
    shutil.rmtree(root, ignore_errors=True)


# The measured process is started by a small launcher, never by pytest itself: CPython spawns
# with vfork, the child runs on the parent's address space until it execs, and Linux records
# that address space's high-water mark into the child's ru_maxrss at exec.  A child of this
# test process would report at least pytest's own peak (seen: 519 MiB for `import voxelhub`
# after the crash tests above), so the differences below would measure nothing.
_LAUNCHER = """
import os, subprocess, sys
with open(sys.argv[1], "wb") as log:
    child = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(child.pid, 0)
child.returncode = os.waitstatus_to_exitcode(status)
print(child.returncode, usage.ru_maxrss)
"""


def _peak_rss_mib(args: list[str], log: Path) -> float:
    """Peak resident set size of a subprocess, from the kernel's accounting (os.wait4)."""
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(log), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    returncode, maxrss_kib = (int(v) for v in done.stdout.split())
    assert returncode == 0, log.read_text()
    return maxrss_kib / 1024


def _baseline_mib(tmp_path: Path) -> float:
    return _peak_rss_mib([sys.executable, "-c", "import voxelhub"], tmp_path / "baseline.log")


def _cli_ingest_peak(paths: list[Path], store: Path, log: Path) -> float:
    args = [sys.executable, "-m", "voxelhub.cli", "ingest", *map(str, paths)]
    return _peak_rss_mib([*args, "--store", str(store), "--workers", "1", "--quiet"], log)


def _check_ingested(store: Path, slices: int) -> None:
    (row,) = _catalog_rows(store)
    assert row["slices"] == slices and row["dtype"] == "<i2"
    assert row["checksum"].startswith("sha256:")


def test_cli_ingest_memory_is_bounded_by_slabs(
    big_series: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    folder, files = big_series
    baseline = _baseline_mib(tmp_path)
    small = _cli_ingest_peak(files[:MEM_SMALL], tmp_path / "small", tmp_path / "small.log")
    _check_ingested(tmp_path / "small", MEM_SMALL)
    shutil.rmtree(tmp_path / "small")
    large = _cli_ingest_peak([folder], tmp_path / "large", tmp_path / "large.log")
    _check_ingested(tmp_path / "large", MEM_SLICES)
    shutil.rmtree(tmp_path / "large")

    volume_mib = MEM_SLICES * SLICE_BYTES / 2**20
    extra_mib = (MEM_SLICES - MEM_SMALL) * SLICE_BYTES / 2**20
    used = {"baseline": baseline, "small": small - baseline, "large": large - baseline}
    assert large - baseline < 0.5 * volume_mib, used
    # 4× the slices, (almost) the same memory: bounded by slabs, not by the volume
    assert large - small < 0.1 * extra_mib, used


def test_library_ingest_memory_is_bounded_by_slabs(
    big_series: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    folder, _ = big_series
    baseline = _baseline_mib(tmp_path)
    code = (
        "import sys, voxelhub; voxelhub.ingest(sys.argv[1], sys.argv[2], workers=1, progress=False)"
    )
    store = tmp_path / "store"
    peak = _peak_rss_mib(
        [sys.executable, "-c", code, str(folder), str(store)], tmp_path / "api.log"
    )
    _check_ingested(store, MEM_SLICES)
    shutil.rmtree(store)
    volume_mib = MEM_SLICES * SLICE_BYTES / 2**20
    assert peak - baseline < 0.5 * volume_mib, {"baseline": baseline, "used": peak - baseline}
