"""Data service benchmark: reads and catalog queries through the service, beside direct disk.

Run as root from the repository root (the hub makes a unix user per hub user, and the service
runs as its own account)::

    .venv/bin/python benchmarks/service.py                  # everything (≈ 6–8 min on 2 cores)
    .venv/bin/python benchmarks/service.py --seconds 15     # shorter concurrent runs
    .venv/bin/python benchmarks/service.py --case volume --case slices   # some parts only
    .venv/bin/python benchmarks/service.py --markdown       # the table of the saved results

The real stack, exactly as the hub runs it (``voxelhub_hub.stack.HubStack``: HTTPS proxy,
system spawner, the data service as a managed service under its own unix account owning the
store, mode 0700) on free ports with a throwaway state folder (``/tmp/vhsvcbench-*``).  Kernels
reach the service at ``stack.data_url`` (plain HTTP on 127.0.0.1, the URL the hub gives a
kernel in ``$VOXELHUB_STORE``) with their hub token; the same URL and client code
(``voxelhub.open_catalog(url, storage_options={"token": …})``) are used here.  The other side
of every comparison is the same store opened directly from disk (``open_catalog(store)``), as
root, in this process.

Input: ``ct_philips_ingenuity_phantom`` (140 × 512 × 512 int16, the largest CT in
``$VOXELHUB_SHARED/data/dicom``) ingested into the store, plus, for the catalog part, 100,000
synthetic volume rows (20,000 studies, 5,000 patients, 3 projects) written into the store's
``catalog.sqlite`` before the phantom is ingested and the hub starts (catalog queries need no
zarr behind the rows): built by ``benchmarks/catalog.py``'s ``synthetic_rows`` + ``build`` when
that file is there (its distributions, through the real schema), else by
:func:`build_synthetic_catalog` here.

Parts (``--case``, repeatable, default all; a part run alone is merged into the saved JSON):

``volume``
    Level 0 read whole: ``cat.open_series(uid).values`` (dask, threaded scheduler), through the
    service and direct, alternating, ``--repeat`` timed runs each after one warm-up; MB/s =
    decoded bytes / median seconds; target: service ≥ 50 % of direct.
``slices``
    What the slice viewer's kernel does for one slice request: ``SliceViewer._on_msg`` with a
    ``{"type": "slice", "axis", "index"}`` message (``voxelhub.widgets.slices``: the level-0
    band the slice crosses is read from the zarr array — 16 axial slices, or a 64-row /
    64-column band across all z — and the slice is cut from it).  ``random``: ``--slices``
    random (axis, index) jumps with the band cache emptied before each (a jump to a place not
    in memory: the worst case); ``preview``: the coarse pyramid level the viewer sends first
    (cold); ``scroll``: 100 consecutive axial slices as fast as they are answered, with the
    viewer's band cache and background prefetch on.  p50/p95; target p50 ≤ 50 ms.
``catalog``
    HTTP ``GET api/series|studies?…`` (JSON, keep-alive session, the reader's hub token) against
    the same ``Catalog.series|studies(…, projects=<reader's projects>)`` call direct; the reader
    is a member of the CT project and of the first two synthetic ones; first pages, one
    project, a text search, and deep pages by ``offset`` and (when the service returns a
    ``next_cursor``) by the ``after`` cursor; ``--query-runs`` timed runs each after 2
    warm-ups; target p50 ≤ 50 ms.
``concurrent``
    20 reader processes (each its own hub user and token) for ``--seconds`` seconds each:
    ``chunk``, HTTP range requests of random inner chunks of level 0 (the request zarr makes for
    one chunk of a sharded array; direct: ``open`` + ``pread`` + ``close`` of the same bytes),
    and ``slice``, random axial slices through zarr (``array[z]``; 64 inner chunks of one
    shard).  Requests/s, MB/s (bytes received / decoded), p50/p95 latency, errors; CPU seconds
    of the service and the hub during the run.  Target: 0 errors.

Everything it creates is removed afterwards, also on failure: processes, unix accounts and
groups, the state folder.  Results go to ``benchmarks/results/service.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import inspect
import json
import math
import multiprocessing as mp
import os
import platform
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import requests

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "service.json"
WORK = REPO / "benchmarks" / "work" / "service"
SHARED = Path(os.environ.get("VOXELHUB_SHARED", REPO.parent / "shared"))
PHANTOM = SHARED / "data" / "dicom" / "ct_philips_ingenuity_phantom"
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "extensions"))

PARTS = ("volume", "slices", "catalog", "concurrent")
TARGETS = {
    "volume_ratio_min": 0.5,
    "slice_p50_ms": 50.0,
    "query_p50_ms": 50.0,
    "concurrent_errors": 0,
}
READERS = 20
SYNTH = {"volumes": 100_000, "studies": 20_000, "patients": 5_000, "projects": 3}
TEXT_TERM = "flair"  # series descriptions: 4 % (catalog.py's rows) or 12 % (ours)


# ----------------------------------------------------------------------------- small helpers


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def ms_summary(values_s: list[float]) -> dict[str, Any]:
    ms = [v * 1e3 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 2),
        "p95_ms": round(pct(ms, 95), 2),
        "min_ms": round(min(ms), 2),
        "max_ms": round(max(ms), 2),
    }


def machine() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version()}
    for name in ("voxelhub", "zarr", "fsspec", "aiohttp", "tornado", "jupyterhub", "sqlalchemy"):
        with contextlib.suppress(Exception):
            versions[name] = __import__(name).__version__
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


# ----------------------------------------------------------------------------- synthetic catalog

_BODY = ("CHEST", "ABDOMEN", "HEAD", "PELVIS", "NECK")
_SERIES_DESC = (
    "AX T1 POST CONTRAST",
    "AX T2 FLAIR",
    "CHEST CT LUNG 1.0",
    "ABDOMEN PORTAL VENOUS",
    "CT ANGIO HEAD NECK",
    "SAG T1 MPRAGE",
    "DWI b1000",
    "COR REFORMAT 3mm",
)
_STUDY_DESC = ("CT CHEST W/O", "MRI BRAIN", "CT ABDOMEN PELVIS", "PET CT WHOLE BODY", "MR KNEE")


def build_synthetic_catalog(
    catalog: Any,
    projects: list[str],
    *,
    volumes: int = SYNTH["volumes"],
    studies: int = SYNTH["studies"],
    patients: int = SYNTH["patients"],
    seed: int = 0,
) -> dict[str, Any]:
    """Bulk-insert synthetic rows (SQLAlchemy core) into ``catalog``; return what was written.

    Patients are spread evenly over ``projects``, studies over patients and volumes over
    studies.  Only the catalog is written: the volumes' ``store_path`` points nowhere.
    """
    from sqlalchemy import insert

    from voxelhub.catalog import Patient, Project, Study, Volume

    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    with catalog.engine.begin() as conn:
        project_ids = []
        for name in projects:
            result = conn.execute(
                insert(Project).values(
                    name=name, deidentify=False, description="synthetic", created_at=now
                )
            )
            project_ids.append(int(result.inserted_primary_key[0]))
        first_patient = _next_id(conn, Patient)
        conn.execute(
            insert(Patient),
            [
                {
                    "id": first_patient + i,
                    "project_id": project_ids[i % len(project_ids)],
                    "patient_key": f"SYN{i:06d}",
                    "patient_name": f"Synthetic^{i}",
                    "sex": "FM"[i % 2],
                    "birth_date": f"19{40 + i % 60:02d}0101",
                }
                for i in range(patients)
            ],
        )
        first_study = _next_id(conn, Study)
        study_rows: list[dict[str, Any]] = []
        for i in range(studies):
            study_rows.append(
                {
                    "id": first_study + i,
                    "patient_id": first_patient + i % patients,
                    "study_uid": f"2.25.{rng.getrandbits(100)}",
                    "study_date": f"20{10 + i % 15:02d}{1 + i % 12:02d}{1 + i % 28:02d}",
                    "description": _STUDY_DESC[i % len(_STUDY_DESC)],
                    "accession_number": f"A{i:08d}",
                }
            )
        conn.execute(insert(Study), study_rows)
        volume_rows = []
        for i in range(volumes):
            study = study_rows[i % studies]
            patient = (study["patient_id"] - first_patient) % patients
            project = projects[patient % len(projects)]
            uid = secrets.token_hex(16)
            volume_rows.append(
                {
                    "volume_uid": uid,
                    "study_id": study["id"],
                    "series_uid": f"2.25.{rng.getrandbits(100)}",
                    "series_number": 1 + i // studies,
                    "split": "",
                    "modality": ("CT", "MR", "PT")[i % 3],
                    "body_part": _BODY[i % len(_BODY)],
                    "description": _SERIES_DESC[i % len(_SERIES_DESC)],
                    "manufacturer": "Synthetic",
                    "slices": 100 + i % 200,
                    "rows": 512,
                    "columns": 512,
                    "spacing_z": 1.0,
                    "spacing_y": 0.7,
                    "spacing_x": 0.7,
                    "dtype": "int16",
                    "flags": [],
                    "reasons": "",
                    "store_path": f"projects/{project}/SYN{patient:06d}/{uid}.ome.zarr",
                    "checksum": "sha256:" + "0" * 64,
                    "content_key": uid,
                    "n_instances": 100 + i % 200,
                    "timepoints": 1,
                    "ingested_at": now,
                }
            )
            if len(volume_rows) == 20_000:
                conn.execute(insert(Volume), volume_rows)
                volume_rows = []
        if volume_rows:
            conn.execute(insert(Volume), volume_rows)
    return {
        "projects": projects,
        "patients": patients,
        "studies": studies,
        "volumes": volumes,
        "build_s": round(time.perf_counter() - t0, 2),
    }


def _next_id(conn: Any, table: Any) -> int:
    from sqlalchemy import func, select

    return int(conn.execute(select(func.coalesce(func.max(table.id), 0))).scalar()) + 1


def _catalog_benchmark() -> Any:
    """``benchmarks/catalog.py`` as a module, or None when it is missing or does not load."""
    path = REPO / "benchmarks" / "catalog.py"
    if not path.exists():
        return None
    import importlib.util

    spec = importlib.util.spec_from_file_location("_vh_catalog_bench", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        print(f"benchmarks/catalog.py does not load ({exc}); using this file's builder")
        return None
    if not all(callable(getattr(module, n, None)) for n in ("synthetic_rows", "build")):
        return None
    return module


def write_synthetic_catalog(store: Path, projects: list[str]) -> dict[str, Any]:
    """The 100,000-volume synthetic catalog in ``store``'s ``catalog.sqlite`` (a new store).

    With ``benchmarks/catalog.py`` present its builder is used (``synthetic_rows`` + ``build``:
    the catalog benchmark's distributions, inserted through the real schema, triggers and
    statistics included), its project names replaced by ``projects``; otherwise
    :func:`build_synthetic_catalog`.
    """
    bench = _catalog_benchmark()
    t0 = time.perf_counter()
    if bench is not None:
        import voxelhub.catalog

        rows = bench.synthetic_rows(SYNTH["volumes"], SYNTH["studies"], SYNTH["patients"])
        for row, name in zip(rows["projects"], projects, strict=False):
            row["name"] = name
        store.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{store / 'catalog.sqlite'}"
        timings = bench.build(voxelhub.catalog, url, store, rows)
        names = [r["name"] for r in rows["projects"]]
        share = {n: 0 for n in names}
        by_project = {r["id"]: r["name"] for r in rows["projects"]}
        patient_project = {r["id"]: by_project[r["project_id"]] for r in rows["patients"]}
        study_project = {r["id"]: patient_project[r["patient_id"]] for r in rows["studies"]}
        for r in rows["volumes"]:
            share[study_project[r["study_id"]]] += 1
        return {
            "builder": "benchmarks/catalog.py: synthetic_rows + build",
            "projects": names,
            "patients": len(rows["patients"]),
            "studies": len(rows["studies"]),
            "volumes": len(rows["volumes"]),
            "volumes_per_project": share,
            "build_s": round(time.perf_counter() - t0, 2),
            "build_detail_s": {k: round(v, 2) for k, v in timings.items()},
        }
    import voxelhub

    catalog = voxelhub.open_catalog(store) if store.is_dir() else _new_catalog(store)
    try:
        info = build_synthetic_catalog(catalog, projects)
    finally:
        catalog.close()
    info["builder"] = "benchmarks/service.py: build_synthetic_catalog"
    return info


def _new_catalog(store: Path) -> Any:
    from voxelhub.catalog import Catalog
    from voxelhub.store.location import open_location

    store.mkdir(parents=True, exist_ok=True)
    return Catalog(open_location(str(store)))


# ----------------------------------------------------------------------------- the site


class Site:
    """The hub stack with the service, its store, the reader's catalogs and tokens."""

    def __init__(self, tag: str, with_catalog: bool) -> None:
        self.tag = tag
        self.admin_name = f"vsadm{tag}"
        self.reader = f"vsr{tag}"
        self.readers = [f"vs{tag}c{i:02d}" for i in range(READERS)]
        self.service_account = f"vhdata{tag}"
        self.ct_project = f"ct{tag}"
        self.synthetic = [f"cohort{c}{tag}" for c in "abc"]
        # the reader sees the CT and two of the three synthetic projects
        self.groups = {
            self.ct_project: [self.reader, *self.readers],
            self.synthetic[0]: [self.reader],
            self.synthetic[1]: [self.reader],
        }
        self.reader_projects = [self.ct_project, *self.synthetic[:2]]
        self.with_catalog = with_catalog
        self.state = Path(tempfile.mkdtemp(prefix="vhsvcbench-"))
        os.chmod(self.state, 0o755)
        self.store = self.state / "store"
        self.stack: Any = None
        self.tokens: dict[str, str] = {}
        self.direct: Any = None
        self.uid = ""
        self.store_path = ""
        self.catalog_info: dict[str, Any] = {}
        self.hub_start_s = 0.0

    # -- setup ------------------------------------------------------------------------------------
    def prepare_store(self) -> None:
        import voxelhub

        if self.with_catalog:  # first: the builder wants a new catalog (its own row ids)
            self.catalog_info = write_synthetic_catalog(self.store, self.synthetic)
            print(f"synthetic catalog: {self.catalog_info}", flush=True)
        t0 = time.perf_counter()
        report = voxelhub.ingest(PHANTOM, self.store, project=self.ct_project, progress=False)
        if report.failed:
            raise RuntimeError(report.summary())
        print(f"ingested {PHANTOM.name} in {time.perf_counter() - t0:.1f} s", flush=True)
        # opened after every row is in (so it sees the statistics the service sees), before the
        # hub hands the store over, and kept open: its SQLite -wal/-shm files then exist, owned
        # by the service account, and are never recreated by root while the service runs
        self.direct = voxelhub.open_catalog(self.store)
        row = self.direct.series(project=self.ct_project).iloc[0]
        self.uid, self.store_path = str(row.volume_uid), str(row.store_path)

    def start(self) -> None:
        from voxelhub_hub.client import HubBrowser
        from voxelhub_hub.stack import HubStack

        self.stack = HubStack(
            self.state / "hub",
            admins=[self.admin_name],
            projects=self.groups,
            spawner="system",
            tls=True,
            extra_env={"VOXELHUB_DATA_USER": self.service_account},
        )
        self.stack.store = str(self.store)
        self.hub_start_s = round(self.stack.start(timeout=180), 2)
        print(f"hub + data service up in {self.hub_start_s} s", flush=True)
        admin = HubBrowser(self.stack.url, self.stack.verify)
        password = secrets.token_urlsafe(18)
        admin.signup(self.admin_name, password)
        admin.login(self.admin_name, password, next_url="/hub/home")
        for group, members in self.groups.items():
            admin.api("POST", f"/groups/{group}/users", json={"users": members}, ok=(200, 201))
        for name in (self.reader, *self.readers):
            body = {"note": "service benchmark", "expires_in": 7200}
            self.tokens[name] = admin.api("POST", f"/users/{name}/tokens", json=body)["token"]

    def service_catalog(self, user: str | None = None) -> Any:
        import voxelhub

        token = self.tokens[user or self.reader]
        return voxelhub.open_catalog(self.stack.data_url, storage_options={"token": token})

    def session(self, user: str | None = None) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.headers["Authorization"] = f"token {self.tokens[user or self.reader]}"
        return s

    def service_process(self) -> psutil.Process | None:
        for p in self.stack.processes():
            with contextlib.suppress(psutil.Error):
                if any("voxelhub_data" in part for part in p.cmdline()):
                    return p
        return None

    def hub_process(self) -> psutil.Process | None:
        with contextlib.suppress(psutil.Error, AttributeError):
            return psutil.Process(self.stack.proc.pid)
        return None

    # -- teardown -----------------------------------------------------------------------------------
    def cleanup(self) -> list[str]:
        from voxelhub_hub.project_groups import remove_group
        from voxelhub_hub.system_users import remove_account, remove_managed_group_if_unused

        problems: list[str] = []
        survivors: list[str] = []
        if self.stack is not None:
            try:
                survivors = self.stack.stop()
            except Exception as exc:
                problems.append(f"stack stop: {exc}")
        if self.direct is not None:
            with contextlib.suppress(Exception):
                self.direct.close()
        for name in (self.admin_name, self.reader, *self.readers):
            try:
                remove_account(name)
            except Exception as exc:  # report, keep cleaning
                problems.append(f"account {name}: {exc}")
        for cmd in (["userdel", self.service_account], ["groupdel", self.service_account]):
            subprocess.run(cmd, capture_output=True, check=False)
        for group in self.groups:
            try:
                remove_group(group)
            except Exception as exc:
                problems.append(f"group {group}: {exc}")
        with contextlib.suppress(Exception):
            remove_managed_group_if_unused()
        shutil.rmtree(self.state, ignore_errors=True)
        for p in problems:
            print(f"clean-up: {p}", file=sys.stderr)
        return survivors


# ----------------------------------------------------------------------------- part 1: volume


def part_volume(site: Site, repeat: int) -> dict[str, Any]:
    import numpy as np

    service = site.service_catalog()
    sides: dict[str, Any] = {"service": service, "direct": site.direct}
    times: dict[str, list[float]] = {"service": [], "direct": []}
    opens: dict[str, list[float]] = {"service": [], "direct": []}
    sums: dict[str, float] = {}
    nbytes = 0
    for run in range(repeat + 1):  # the first run of each side is a warm-up
        for name, cat in sides.items():
            t0 = time.perf_counter()
            volume = cat.open_series(site.uid)
            t1 = time.perf_counter()
            array = volume.values
            t2 = time.perf_counter()
            nbytes = array.nbytes
            sums[name] = float(np.asarray(array, dtype=np.float64).sum())
            if run:
                times[name].append(t2 - t0)
                opens[name].append(t1 - t0)
            print(f"volume {name} run {run}: {t2 - t0:.3f} s", flush=True)
    if sums["service"] != sums["direct"]:
        raise RuntimeError(f"the service returned other voxels: {sums}")
    out: dict[str, Any] = {"shape": list(volume.shape), "dtype": str(volume.dtype)}
    out["decoded_mb"] = round(nbytes / 1e6, 2)
    for name in sides:
        median = statistics.median(times[name])
        out[name] = {
            "runs_s": [round(t, 4) for t in times[name]],
            "median_s": round(median, 4),
            "open_median_s": round(statistics.median(opens[name]), 4),
            "mb_per_s": round(nbytes / 1e6 / median, 1),
        }
    out["ratio"] = round(out["service"]["mb_per_s"] / out["direct"]["mb_per_s"], 3)
    out["meets_target"] = out["ratio"] >= TARGETS["volume_ratio_min"]
    return out


# ----------------------------------------------------------------------------- part 2: slices


def part_slices(site: Site, n_slices: int, seed: int, variant_slices: int) -> dict[str, Any]:
    from voxelhub.widgets.slices import CACHE_BYTES, SliceViewer

    viewers = {
        "service": SliceViewer.from_volume(site.uid, catalog=site.service_catalog()),
        "direct": SliceViewer.from_volume(site.uid, catalog=site.direct),
    }
    shape = viewers["direct"].shape
    rng = random.Random(seed)
    jumps = [(k % 3, rng.randrange(shape[k % 3])) for k in range(n_slices)]
    out: dict[str, Any] = {"shape": list(shape), "levels_for_axis": viewers["direct"].levels_for(0)}

    def ask(
        viewer: Any, axis: int, index: int, *, full: bool = True, preview: bool = False
    ) -> float:
        message = {"type": "slice", "axis": axis, "index": index, "full": full, "preview": preview}
        t0 = time.perf_counter()
        viewer._on_msg(viewer, message, [])
        return time.perf_counter() - t0

    def cold(viewer: Any) -> None:
        viewer.wait_prefetch()
        viewer.cache.resize(0)
        viewer.cache.resize(CACHE_BYTES)

    for viewer in viewers.values():
        viewer.prefetch = False
        ask(viewer, 0, shape[0] // 2)  # warm-up: connections, zarr metadata
    random_s: dict[str, dict[int, list[float]]] = {k: {0: [], 1: [], 2: []} for k in viewers}
    preview_s: dict[str, list[float]] = {k: [] for k in viewers}
    for axis, index in jumps:  # service and direct alternate, so drift hits both alike
        for name, viewer in viewers.items():
            cold(viewer)
            random_s[name][axis].append(ask(viewer, axis, index))
            cold(viewer)
            preview_s[name].append(ask(viewer, axis, index, full=False, preview=True))
    out["shard_reads"] = _shard_read_variants(viewers["service"], shape, variant_slices, rng)
    scroll_s: dict[str, list[float]] = {}
    for name, viewer in viewers.items():
        viewer.prefetch = True
        cold(viewer)
        start = rng.randrange(0, max(1, shape[0] - 100))
        ask(viewer, 0, start)  # the first slice of the scroll (a jump, not timed)
        scroll_s[name] = [ask(viewer, 0, start + i) for i in range(1, min(101, shape[0] - start))]
        viewer.wait_prefetch()
        viewer.prefetch = False
    names = ("axial", "coronal", "sagittal")
    for name in viewers:
        every = [t for axis in range(3) for t in random_s[name][axis]]
        out[name] = {
            "random": {
                "all": ms_summary(every),
                **{names[a]: ms_summary(random_s[name][a]) for a in range(3)},
            },
            "preview": ms_summary(preview_s[name]),
            "scroll_axial": ms_summary(scroll_s[name]),
            "band_reads": len(viewers[name].reads),
        }
    out["ratio_p50"] = round(
        out["service"]["random"]["all"]["p50_ms"] / out["direct"]["random"]["all"]["p50_ms"], 2
    )
    out["meets_target"] = out["service"]["random"]["all"]["p50_ms"] <= TARGETS["slice_p50_ms"]
    for viewer in viewers.values():
        viewer.close()
    return out


SHARD_READS = {
    # ServiceStore settings (voxelhub.store.service_store); {} = the defaults ServiceLocation uses
    "sequential": {"max_gap": -1, "concurrency": 1},
    "concurrent": {"max_gap": -1},
    "merged_64k": {"max_gap": 64 * 1024},
    "merged": {},
    "merged_16": {"concurrency": 16},
    "span": {"max_gap": 1 << 40, "max_request": 1 << 40},
}
"""How the inner chunks of a partly read shard are fetched through the service: one request
after the other (zarr 3.1.6 alone), one request each but 8 at a time, merged when at most 64 KiB
or 256 KiB apart (the default) and 8 at a time (or 16 at a time), or the whole span of the needed chunks in one request (for
a band, nearly the whole shard: what fetching whole shards into a cache costs on a cold band)."""


def _shard_read_variants(
    viewer: Any, shape: tuple[int, ...], n: int, rng: random.Random
) -> dict[str, Any]:
    """Cold random slices through the service under each of :data:`SHARD_READS`, interleaved."""
    from voxelhub.store.service_store import ServiceStore

    defaults = {k: getattr(ServiceStore, k) for k in ("max_gap", "max_request", "concurrency")}
    times: dict[str, list[float]] = {k: [] for k in SHARD_READS}
    try:
        for k in range(n):
            axis = k % 3
            index = rng.randrange(shape[axis])
            for name, settings in SHARD_READS.items():
                for attr, value in {**defaults, **settings}.items():
                    setattr(ServiceStore, attr, value)
                viewer.wait_prefetch()
                viewer.cache.resize(0)
                viewer.cache.resize(viewer.cache_bytes)
                message = {"type": "slice", "axis": axis, "index": index, "full": True}
                t0 = time.perf_counter()
                viewer._on_msg(viewer, {**message, "preview": False}, [])
                times[name].append(time.perf_counter() - t0)
    finally:
        for attr, value in defaults.items():
            setattr(ServiceStore, attr, value)
    return {name: ms_summary(values) for name, values in times.items()}


# ----------------------------------------------------------------------------- part 3: catalog


def part_catalog(site: Site, runs: int) -> dict[str, Any]:
    session = site.session()
    base = site.stack.data_url + "/api/"
    projects = site.reader_projects
    probe = session.get(base + "series", params={"limit": 50}, timeout=60)
    probe.raise_for_status()
    cursor = probe.json().get("next_cursor") or probe.headers.get("X-Next-Cursor")
    direct = site.direct
    queries: list[tuple[str, str, dict[str, Any], Callable[[], Any] | None]] = [
        ("whoami (no catalog)", "", {}, None),
        (
            "series first page",
            "series",
            {"limit": 50},
            lambda: direct.series(limit=50, projects=projects),
        ),
        (
            "series first page (parquet)",
            "series",
            {"limit": 50, "format": "parquet"},
            lambda: direct.series(limit=50, projects=projects),
        ),
        (
            "series of one project",
            "series",
            {"project": site.synthetic[0], "limit": 50},
            lambda: direct.series(project=site.synthetic[0], limit=50, projects=projects),
        ),
        (
            f"series text={TEXT_TERM!r}",
            "series",
            {"text": TEXT_TERM, "limit": 50},
            lambda: direct.series(text=TEXT_TERM, limit=50, projects=projects),
        ),
        (
            "studies first page",
            "studies",
            {"limit": 50},
            lambda: direct.studies(limit=50, projects=projects),
        ),
    ]
    keyset = "after" in inspect.signature(direct.series).parameters
    for kind, depth in (("series", 50_000), ("studies", 10_000)):
        queries.append(
            (
                f"{kind} offset={depth}",
                kind,
                {"offset": depth, "limit": 50},
                partial(getattr(direct, kind), offset=depth, limit=50, projects=projects),
            )
        )
        if cursor:  # the same depth by keyset: the cursor of the page before
            deep = _walk_cursor(session, base + kind, depth)
            queries.append(
                (
                    f"{kind} row {depth:,} (after cursor)",
                    kind,
                    {"after": deep, "limit": 50},
                    partial(getattr(direct, kind), after=deep, limit=50, projects=projects)
                    if keyset
                    else None,
                )
            )
    paging = "after cursor and offset" if cursor else "offset (the service returned no cursor)"
    visible = direct.series(projects=projects, limit=None)
    out: dict[str, Any] = {
        "catalog": site.catalog_info,
        "reader_projects": projects,
        "reader_visible_volumes": len(visible),
        "paging": paging,
        "queries": {},
    }
    for label, path, params, direct_call in queries:
        service_s, direct_s = [], []
        rows = None
        for run in range(runs + 2):  # two warm-ups
            t0 = time.perf_counter()
            r = session.get(base + path, params=params, timeout=120)
            elapsed = time.perf_counter() - t0
            if r.status_code != 200:
                raise RuntimeError(f"{label}: {r.status_code} {r.text[:300]}")
            if run >= 2:
                service_s.append(elapsed)
            if rows is None and path and params.get("format") != "parquet":
                rows = len(r.json()["rows"])
            if direct_call is not None:
                t0 = time.perf_counter()
                frame = direct_call()
                if run >= 2:
                    direct_s.append(time.perf_counter() - t0)
                if rows is not None and len(frame) != rows:
                    raise RuntimeError(f"{label}: service {rows} rows, direct {len(frame)}")
        entry: dict[str, Any] = {
            "request": f"GET api/{path}"
            + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else ""),
            "rows": rows,
            "service": ms_summary(service_s),
            "direct": ms_summary(direct_s) if direct_s else None,
        }
        entry["meets_target"] = entry["service"]["p50_ms"] <= TARGETS["query_p50_ms"]
        out["queries"][label] = entry
        print(
            f"{label:38} service p50 {entry['service']['p50_ms']:8.1f} ms  p95 "
            f"{entry['service']['p95_ms']:8.1f} ms"
            + (f"   direct p50 {entry['direct']['p50_ms']:8.1f} ms" if direct_s else ""),
            flush=True,
        )
    out["missing_target"] = [
        k for k, v in out["queries"].items() if not v["meets_target"] and k != "whoami (no catalog)"
    ]
    return out


def _walk_cursor(session: requests.Session, url: str, rows: int) -> str:
    """The ``after`` cursor ``rows`` rows in, followed 1,000 rows at a time."""
    cursor, seen = None, 0
    while seen < rows:
        params: dict[str, Any] = {"limit": min(1000, rows - seen)}
        if cursor:
            params["after"] = cursor
        r = session.get(url, params=params, timeout=120)
        r.raise_for_status()
        body = r.json()
        seen += len(body["rows"])
        cursor = body.get("next_cursor") or r.headers.get("X-Next-Cursor")
        if not cursor:
            break
    return str(cursor or "")


# ----------------------------------------------------------------------------- part 4: concurrent

_BINS = 4000
_BIN_LO, _BIN_HI = 1e-6, 1e3  # seconds; log-spaced bins (0.5 % wide)


def _bin(seconds: float) -> int:
    if seconds <= _BIN_LO:
        return 0
    x = math.log(seconds / _BIN_LO) / math.log(_BIN_HI / _BIN_LO) * _BINS
    return min(_BINS - 1, int(x))


def _bin_value(i: int) -> float:
    return _BIN_LO * (_BIN_HI / _BIN_LO) ** ((i + 0.5) / _BINS)


def _hist_pct(hist: list[int], q: float) -> float:
    total = sum(hist)
    target = math.ceil(q / 100 * total)
    acc = 0
    for i, n in enumerate(hist):
        acc += n
        if acc >= target:
            return _bin_value(i)
    return float("nan")


def _worker_init() -> None:
    import zarr  # noqa: F401  imports paid before the clock starts

    import voxelhub.store.location  # noqa: F401


def _reader(
    kind: str, side: str, conf: dict[str, Any], start_at: float, seconds: float, seed: int
) -> dict[str, Any]:
    """One reader process: random reads from ``start_at`` for ``seconds``; a latency histogram."""
    rng = random.Random(seed)
    hist = [0] * _BINS
    count = nbytes = errors = 0
    samples: list[str] = []
    read: Callable[[], int]
    if kind == "chunk":
        chunks = conf["chunks"]  # [(key, offset, length)]
        if side == "service":
            s = requests.Session()
            s.trust_env = False
            s.headers["Authorization"] = f"token {conf['token']}"

            def read() -> int:
                key, offset, length = rng.choice(chunks)
                r = s.get(
                    conf["url"] + key,
                    headers={"Range": f"bytes={offset}-{offset + length - 1}"},
                    timeout=60,
                )
                if r.status_code != 206 or len(r.content) != length:
                    raise RuntimeError(f"{r.status_code} {len(r.content)}/{length} {r.text[:80]}")
                return length

        else:

            def read() -> int:
                key, offset, length = rng.choice(chunks)
                fd = os.open(conf["root"] + key, os.O_RDONLY)
                try:
                    data = os.pread(fd, length, offset)
                finally:
                    os.close(fd)
                if len(data) != length:
                    raise RuntimeError(f"short read {len(data)}/{length}")
                return length

    else:
        import numpy as np
        import zarr

        from voxelhub.store.location import open_location

        options = {"token": conf["token"]} if side == "service" else None
        location = open_location(conf["store"], options)
        group = zarr.open_group(location.zarr_store(conf["store_path"], read_only=True), mode="r")
        array = group["0"]
        assert isinstance(array, zarr.Array)
        nz = int(array.shape[0])

        def read() -> int:
            return int(np.asarray(array[rng.randrange(nz)]).nbytes)

    late = max(0.0, time.time() - start_at)
    while time.time() < start_at:
        time.sleep(0.005)
    end = start_at + seconds
    while True:
        t0 = time.perf_counter()
        if time.time() >= end:
            break
        try:
            nbytes += read()
            count += 1
            hist[_bin(time.perf_counter() - t0)] += 1
        except Exception as exc:
            errors += 1
            if len(samples) < 5:
                samples.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            time.sleep(0.01)
    return {
        "count": count,
        "bytes": nbytes,
        "errors": errors,
        "samples": samples,
        "hist": hist,
        "late_s": late,
    }


def _shard_chunks(
    store: Path, store_path: str
) -> tuple[list[tuple[str, int, int]], dict[str, Any]]:
    """Every stored inner chunk of level 0: (key relative to the store, offset, length)."""
    import numpy as np

    level = store / store_path / "0"
    meta = json.loads((level / "zarr.json").read_text())
    shard_shape = meta["chunk_grid"]["configuration"]["chunk_shape"]
    sharding = next(c for c in meta["codecs"] if c["name"] == "sharding_indexed")
    inner = sharding["configuration"]["chunk_shape"]
    per_shard = int(np.prod([s // i for s, i in zip(shard_shape, inner, strict=True)]))
    assert sharding["configuration"].get("index_location", "end") == "end"
    out = []
    for shard in sorted(level.glob("c/*/*/*")):
        data = shard.read_bytes()
        index = np.frombuffer(data[-(per_shard * 16 + 4) : -4], dtype="<u8").reshape(-1, 2)
        key = str(shard.relative_to(store))
        for offset, length in index:
            if offset != np.iinfo(np.uint64).max:
                out.append((key, int(offset), int(length)))
    sizes = [n for _, _, n in out]
    return out, {
        "inner_chunk_shape": inner,
        "shard_shape": shard_shape,
        "inner_chunks": len(out),
        "mean_chunk_bytes": round(statistics.mean(sizes)),
    }


def part_concurrent(site: Site, seconds: float, profile: bool) -> dict[str, Any]:
    chunks, layout = _shard_chunks(site.store, site.store_path)
    data_api = site.stack.data_url + "/api/store/"
    out: dict[str, Any] = {"readers": READERS, "seconds": seconds, "layout": layout}
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(READERS, initializer=_worker_init)
    ok = False
    try:
        pool.map(abs, range(READERS), chunksize=1)  # every worker started and imported
        for kind in ("chunk", "slice"):
            out[kind] = {}
            for side in ("service", "direct"):
                confs = []
                for user in site.readers:
                    if kind == "chunk":
                        quoted = [(quote(k), o, n) for k, o, n in chunks]
                        conf = (
                            {"url": data_api, "token": site.tokens[user], "chunks": quoted}
                            if side == "service"
                            else {"root": str(site.store) + "/", "chunks": chunks}
                        )
                    else:
                        conf = {
                            "store": site.stack.data_url if side == "service" else str(site.store),
                            "token": site.tokens[user],
                            "store_path": site.store_path,
                        }
                    confs.append(conf)
                out[kind][side] = _concurrent_run(site, pool, kind, side, confs, seconds, profile)
                r = out[kind][side]
                print(
                    f"concurrent {kind:5} {side:7}: {r['requests_per_s']:8.1f} req/s "
                    f"{r['mb_per_s']:7.1f} MB/s p50 {r['p50_ms']:7.2f} ms p95 {r['p95_ms']:7.2f} ms "
                    f"errors {r['errors']}",
                    flush=True,
                )
        ok = True
    finally:
        if ok:
            pool.close()
        else:
            pool.terminate()
        pool.join()
    out["meets_target"] = all(out[k]["service"]["errors"] == 0 for k in ("chunk", "slice"))
    return out


def _concurrent_run(
    site: Site,
    pool: Any,
    kind: str,
    side: str,
    confs: list[dict[str, Any]],
    seconds: float,
    profile: bool,
) -> dict[str, Any]:
    service, hub = site.service_process(), site.hub_process()
    start_at = time.time() + 5.0  # each reader opens its store before the clock starts
    jobs = [(kind, side, conf, start_at, seconds, 1000 * i + 7) for i, conf in enumerate(confs)]
    pending = pool.starmap_async(_reader, jobs, chunksize=1)
    while time.time() < start_at:
        time.sleep(0.01)
    cpu0 = {k: _cpu(p) for k, p in (("service", service), ("hub", hub))}
    spy = None
    py_spy = py_spy_path()
    if profile and py_spy and side == "service" and service is not None:
        WORK.mkdir(parents=True, exist_ok=True)
        spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(service.pid),
                "--duration",
                str(int(max(5, min(30, seconds - 2)))),
                "--format",
                "raw",
                "--threads",
                "--idle",
                "--output",
                str(WORK / f"service-{kind}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    time.sleep(seconds)
    cpu1 = {k: _cpu(p) for k, p in (("service", service), ("hub", hub))}
    results = pending.get(timeout=seconds + 300)
    if spy is not None:
        spy.wait(120)
    hist = [sum(r["hist"][i] for r in results) for i in range(_BINS)]
    count = sum(r["count"] for r in results)
    nbytes = sum(r["bytes"] for r in results)
    errors = sum(r["errors"] for r in results)
    out: dict[str, Any] = {
        "requests": count,
        "requests_per_s": round(count / seconds, 1),
        "mb_per_s": round(nbytes / 1e6 / seconds, 1),
        "p50_ms": round(_hist_pct(hist, 50) * 1e3, 2) if count else None,
        "p95_ms": round(_hist_pct(hist, 95) * 1e3, 2) if count else None,
        "p99_ms": round(_hist_pct(hist, 99) * 1e3, 2) if count else None,
        "errors": errors,
        "error_samples": sorted({s for r in results for s in r["samples"]})[:5],
        "per_reader_requests_min_max": [
            min(r["count"] for r in results),
            max(r["count"] for r in results),
        ],
        "latest_reader_start_s": round(max(r["late_s"] for r in results), 2),
    }
    if side == "service":
        used = {}
        for k, before in cpu0.items():
            after = cpu1[k]
            if before is not None and after is not None:
                used[k] = round(after - before, 1)
        out["cpu_s"] = used
        out["cpu_cores"] = {k: round(v / seconds, 2) for k, v in out["cpu_s"].items()}
    if spy is not None:
        out["profile"] = _profile_summary(WORK / f"service-{kind}.txt")
    return out


def py_spy_path() -> str | None:
    """py-spy from PATH, the virtual environment, or a ``pip install --target /tmp/pyspy``."""
    for cand in (shutil.which("py-spy"), str(VENV_BIN / "py-spy"), "/tmp/pyspy/bin/py-spy"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def _cpu(p: psutil.Process | None) -> float | None:
    if p is None:
        return None
    try:
        t = p.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return None


_IDLE_FRAMES = (
    "EpollSelector.select",
    "_worker (concurrent",
    "Condition.wait",
    "_run_safe_shutdown_loop",
    "BaseSelectorEventLoop._read_from_self",
)


def _profile_summary(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and total samples per function from py-spy's collapsed stacks (busy threads)."""
    if not path.exists():
        return {}
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        if any(idle in frames[-1] for idle in _IDLE_FRAMES) and "HubAuth" not in stack:
            continue  # a thread waiting for work (py-spy's idle detection misses waits in C)
        total += count
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + count
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + count

    def rank(d: dict[str, int]) -> list[list[Any]]:
        return [[k, round(v / total, 3)] for k, v in sorted(d.items(), key=lambda x: -x[1])[:top]]

    return {
        "busy_samples": total,
        "self": rank(own),
        "inclusive": rank(inclusive),
        "raw": str(path),
    }


# ----------------------------------------------------------------------------- run and report


def run(parts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    site = Site(secrets.token_hex(3), with_catalog="catalog" in parts)
    results: dict[str, Any] = {}
    try:
        site.prepare_store()
        site.start()
        results["hub_start_s"] = site.hub_start_s
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "volume": lambda: part_volume(site, args.repeat),
            "slices": lambda: part_slices(site, args.slices, args.seed, args.variant_slices),
            "catalog": lambda: part_catalog(site, args.query_runs),
            "concurrent": lambda: part_concurrent(site, args.seconds, args.profile),
        }
        for part in PARTS:
            if part in parts:
                before = round(os.getloadavg()[0], 2)
                others_before = _other_cpu_seconds()
                t0 = time.monotonic()
                results[part] = steps[part]()
                wall = time.monotonic() - t0
                # other work on the machine shows here: the load average beside each part, and
                # the CPU that processes outside this benchmark used while it ran
                results[part]["load_avg_1m_before_after"] = [before, round(os.getloadavg()[0], 2)]
                results[part]["other_processes_cpu_cores"] = round(
                    max(0.0, _other_cpu_seconds() - others_before) / wall, 2
                )
                results[part]["wall_s"] = round(wall, 1)
    finally:
        survivors = site.cleanup()
        results["survivors_after_stop"] = survivors
    return results


def _other_cpu_seconds() -> float:
    """CPU seconds used so far by the processes that are not this benchmark or its children
    (other users of the machine; a process that starts and ends within a part is missed)."""
    ours = {os.getpid(), *(c.pid for c in psutil.Process().children(recursive=True))}
    total = 0.0
    for p in psutil.process_iter(["pid", "cpu_times"]):
        times = p.info.get("cpu_times")
        if p.info["pid"] not in ours and times is not None:
            total += times.user + times.system
    return total


def code_state() -> dict[str, Any]:
    """The git revision measured, and uncommitted changes to the code under test, if any."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "workspace/voxelhub", "extensions", "hub_config")
    return {"head": git("rev-parse", "HEAD"), "uncommitted": changed.splitlines()}


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 10 else f"{x:.1f}"


def table(data: dict[str, Any]) -> str:
    r = data["results"]
    t = data["targets"]
    lines = [
        "| measure | through the service | direct from disk | target | met |",
        "|---|---|---|---|---|",
    ]

    def yes(ok: bool) -> str:
        return "yes" if ok else "**no**"

    if "volume" in r:
        v = r["volume"]
        lines.append(
            f"| whole volume, level 0 ({v['decoded_mb']:.1f} MB), `open_series(…).values`, median "
            f"of {len(v['service']['runs_s'])} | {v['service']['median_s']:.3f} s = "
            f"{v['service']['mb_per_s']:.0f} MB/s ({v['ratio'] * 100:.0f} % of direct) | "
            f"{v['direct']['median_s']:.3f} s = {v['direct']['mb_per_s']:.0f} MB/s | ≥ "
            f"{t['volume_ratio_min'] * 100:.0f} % of direct | {yes(v['meets_target'])} |"
        )
    if "slices" in r:
        s = r["slices"]
        for label, key in (
            ("random slice, cold band (all axes)", ("random", "all")),
            ("… axial", ("random", "axial")),
            ("… coronal", ("random", "coronal")),
            ("… sagittal", ("random", "sagittal")),
        ):
            sv, dv = s["service"][key[0]][key[1]], s["direct"][key[0]][key[1]]
            target = f"p50 ≤ {t['slice_p50_ms']:.0f} ms" if key[1] == "all" else ""
            met = yes(sv["p50_ms"] <= t["slice_p50_ms"]) if key[1] == "all" else ""
            lines.append(
                f"| {label}, n={sv['n']} | p50 {_ms(sv['p50_ms'])} / p95 {_ms(sv['p95_ms'])} ms | "
                f"p50 {_ms(dv['p50_ms'])} / p95 {_ms(dv['p95_ms'])} ms | {target} | {met} |"
            )
        labels = {
            "sequential": "one request after the other (zarr 3.1.6 alone)",
            "concurrent": "one request per chunk, 8 at a time",
            "merged_64k": "merged when ≤ 64 KiB apart, 8 at a time",
            "merged": "merged when ≤ 256 KiB apart, 8 at a time (the default)",
            "merged_16": "merged when ≤ 256 KiB apart, 16 at a time",
            "span": "one request for the span of the chunks (≈ whole shard)",
        }
        for name, sv in s.get("shard_reads", {}).items():
            lines.append(
                f"| … cold random slice, a shard's chunks fetched {labels.get(name, name)}, "
                f"n={sv['n']} | p50 {_ms(sv['p50_ms'])} / p95 {_ms(sv['p95_ms'])} ms | - |  |  |"
            )
        for label, part in (
            ("preview slice (coarse level, cold)", "preview"),
            ("axial scroll, 100 slices, cache + prefetch", "scroll_axial"),
        ):
            sv, dv = s["service"][part], s["direct"][part]
            lines.append(
                f"| {label}, n={sv['n']} | p50 {_ms(sv['p50_ms'])} / p95 {_ms(sv['p95_ms'])} ms | "
                f"p50 {_ms(dv['p50_ms'])} / p95 {_ms(dv['p95_ms'])} ms |  |  |"
            )
    if "catalog" in r:
        c = r["catalog"]
        for label, q in c["queries"].items():
            d = q["direct"]
            direct = f"p50 {_ms(d['p50_ms'])} / p95 {_ms(d['p95_ms'])} ms" if d else "-"
            catalog_query = label != "whoami (no catalog)"
            request = re.sub(r"after=[^&]+", "after=<cursor>", q["request"])
            lines.append(
                f"| `{request}` ({label}, {q['service']['n']} runs) | p50 "
                f"{_ms(q['service']['p50_ms'])} / p95 {_ms(q['service']['p95_ms'])} ms | {direct} | "
                + (
                    f"p50 ≤ {t['query_p50_ms']:.0f} ms | {yes(q['meets_target'])} |"
                    if catalog_query
                    else " |  |"
                )
            )
    if "concurrent" in r:
        c = r["concurrent"]
        for kind, label in (
            ("chunk", "inner-chunk range GETs"),
            ("slice", "axial slices via zarr"),
        ):
            if kind not in c:
                continue
            sv, dv = c[kind]["service"], c[kind]["direct"]

            def cell(x: dict[str, Any]) -> str:
                return (
                    f"{x['requests_per_s']:.0f} req/s, {x['mb_per_s']:.0f} MB/s, p50 {_ms(x['p50_ms'])} / "
                    f"p95 {_ms(x['p95_ms'])} ms, {x['errors']} errors"
                )

            lines.append(
                f"| {c['readers']} readers × {c['seconds']:.0f} s, {label} | {cell(sv)} | {cell(dv)} | "
                f"0 errors | {yes(sv['errors'] == 0)} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", action="append", choices=PARTS, help="part(s) to run [all]")
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed whole-volume reads per side [5]"
    )
    parser.add_argument("--slices", type=int, default=120, help="random slices per side [120]")
    parser.add_argument(
        "--variant-slices",
        type=int,
        default=45,
        help="cold random slices per way of fetching a shard's chunks [45]",
    )
    parser.add_argument("--query-runs", type=int, default=30, help="timed runs per query [30]")
    parser.add_argument("--seconds", type=float, default=60.0, help="each concurrent run [60]")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="py-spy the service under load")
    parser.add_argument("--markdown", action="store_true", help="print the saved results' table")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file [{RESULTS}]")
    args = parser.parse_args(argv)
    if args.markdown:
        print(table(json.loads(args.output.read_text())))
        return 0
    if os.geteuid() != 0:
        parser.error("needs root: hub users are unix users and the service runs as its own account")
    if not PHANTOM.is_dir():
        parser.error(f"{PHANTOM} is missing (set $VOXELHUB_SHARED)")
    parts = args.case or list(PARTS)
    started = dt.datetime.now(dt.UTC)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    t0 = time.monotonic()
    results = run(parts, args)
    previous: dict[str, Any] = {}
    if args.case and args.output.exists():  # a part run alone keeps the others' results
        with contextlib.suppress(ValueError):
            previous = json.loads(args.output.read_text())
    merged = {**previous.get("results", {}), **results}
    data = {
        "benchmark": "service",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join(
            [
                ".venv/bin/python",
                "benchmarks/service.py",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "wall_s": round(time.monotonic() - t0, 1),
        "machine": {**machine(), "load_avg_1_5_15_at_start": load_at_start},
        "code": code_state(),
        "input": {
            "volume": PHANTOM.name,
            "synthetic_catalog": SYNTH,
            "readers": READERS,
        },
        "targets": TARGETS,
        "notes": [
            "one machine: the service, the hub and the client (this process and its reader "
            "processes) share the CPUs",
            "service = stack.data_url (plain HTTP on 127.0.0.1, what a kernel on the hub uses) "
            "with a hub API token; direct = open_catalog(<store folder>) as root in this process",
            "the store's files are in the page cache for both sides (ingested just before)",
            "slice times are SliceViewer._on_msg in this process (the kernel's side of one "
            "slice request: band read + cut + send to a comm without a frontend)",
            "concurrent: 20 spawned processes, each its own hub user; latency percentiles from "
            "a log histogram with 0.5 % wide bins",
        ],
        "results": merged,
    }
    if previous and args.case:
        data["parts_rerun"] = {p: data["date"] for p in parts}
        # the run the other parts come from: its date, code and machine load stay on record
        data["other_parts_from"] = previous.get("other_parts_from") or {
            k: previous.get(k) for k in ("date", "command", "wall_s", "machine", "code")
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(data, indent=2) + "\n")
    print()
    print(table(data))
    print(f"\nwritten to {args.output} ({data['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
