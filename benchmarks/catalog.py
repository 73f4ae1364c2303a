"""Catalog benchmark: the queries the widgets and the data service make, at 100,000 series.

    .venv/bin/python benchmarks/catalog.py                  # SQLite, and PostgreSQL if it can
    .venv/bin/python benchmarks/catalog.py --baseline REV   # also the catalog.py of git REV
    .venv/bin/python benchmarks/catalog.py --volumes 20000 --repeat 5   # a quick smoke run
    .venv/bin/python benchmarks/catalog.py --markdown       # print the table of the saved results

It builds a synthetic catalog through the real schema (``voxelhub.catalog.Base.metadata``, bulk
inserts with SQLAlchemy core, so the triggers that keep the full-text and flag indexes in sync
run as they do on ingest), then opens it once as a writer (the schema upgrade and SQLite's
statistics, as ingest and the data service do): 3 projects (60/30/10 %), 5,000 patients,
20,000 studies (1–9 volumes each, 5 on average), 100,000 volumes with realistic study and series descriptions,
1 % without a series number, 4 % split (echo or image type) and 3 % flagged.  Then it times
each query ``--repeat`` times (after 2 warm-up runs) through the public ``Catalog`` methods,
DataFrame included, and reports p50 and p95.

PostgreSQL: a throwaway cluster from Debian's packages on loopback, started the way
``make test`` starts the tests' one (as ``nobody`` when run as root); skipped with a note if
``/usr/lib/postgresql/*/bin`` is missing.

``--baseline REV`` loads ``workspace/voxelhub/catalog.py`` as it was at git revision REV into a
separate module, builds the same catalog with that schema and times the cases its API has (no
keyset paging); then it opens that old catalog with the current code (the one-time upgrade,
timed) and checks both find the same rows.  ``VOXELHUB_BENCH_POSTGRES_URL`` (an admin URL)
uses an existing server instead.  Results: ``benchmarks/results/catalog.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "catalog.json"
sys.path.insert(0, str(REPO / "workspace"))

import sqlalchemy  # noqa: E402
from sqlalchemy import create_engine, insert, text  # noqa: E402

TARGET_MS = 50.0
PAGE = 50

STUDY_DESCRIPTIONS = {
    "CT": [
        "CT CHEST W/O CONTRAST",
        "CT CHEST ABDOMEN PELVIS W CONTRAST",
        "CT HEAD W/O CONTRAST",
        "CTA CHEST PE PROTOCOL",
        "CT ABDOMEN PELVIS W CONTRAST",
        "Low-dose CT lung screening",
        "CT Sinus",
        "CT Spine Lumbar",
    ],
    "MR": [
        "MRI BRAIN W/WO CONTRAST",
        "MR Knee left",
        "MR Knee right",
        "MRI Prostate multiparametric",
        "MRI LUMBAR SPINE W/O",
        "Cardiac MRI function",
        "MR Liver dynamic",
        "Breast MRI bilateral",
    ],
    "PT": ["PET/CT whole body FDG", "PET brain amyloid"],
}
SERIES_DESCRIPTIONS = {
    "CT": [
        "Axial 5mm",
        "AX 1.25mm LUNG",
        "Soft Tissue 3.0 B30f",
        "Bone 1.0 B70s",
        "COR MPR 3mm",
        "SAG MPR 3mm",
        "Topogram 0.6 T20s",
        "Arterial phase",
        "Portal venous phase",
        "Dose report",
    ],
    "MR": [
        "AX T1 POST",
        "SAG T2 FLAIR",
        "AX DWI b1000",
        "ADC map",
        "t1_mprage_sag_p2_iso",
        "t2_tse_tra",
        "COR PD FS",
        "SWI mIP",
        "localizer",
        "DCE T1 vibe dynamic",
        "cine SSFP 4ch",
    ],
    "PT": ["PET WB AC", "PET WB NAC", "CT AC 5mm"],
}
FLAGS = {
    "non_uniform_spacing": "slice steps vary from 1.0 to 2.5 mm",
    "missing_slices": "2 positions missing between 40 and 43 mm",
    "gantry_tilt": "gantry tilted 12.5°; resampled onto an orthogonal grid",
    "volumes_by_instance_order": "no position tags: slices ordered by InstanceNumber",
    "no_pixel_spacing": "PixelSpacing is missing; 1 mm assumed in-plane",
}
PROJECTS = [("oncology", 0.6), ("neuro", 0.3), ("msk", 0.1)]
SEARCHES = [
    ("chest", "study descriptions, 19 % of volumes"),
    ("FLAIR", "series descriptions, upper case, 4 %"),
    ("t1_mprage", "an underscore (a LIKE wildcard) taken literally, 4 %"),
    ("W/O contrast", "punctuation and mixed case, study descriptions"),
    ("vibe dynamic", "two words, 4 %"),
    ("no such words", "no match"),
    ("ax", "2 characters: below the trigram length, scanned with LIKE"),
]


def uid(rng: random.Random) -> str:
    return "1.2.826.0.1.3680043.8.498." + ".".join(str(rng.randrange(1, 10**9)) for _ in range(3))


def synthetic_rows(
    volumes: int, studies: int, patients: int, seed: int = 7
) -> dict[str, list[dict[str, Any]]]:
    """Rows for projects, patients, studies and volumes (ids given, so inserts are plain)."""
    rng = random.Random(seed)
    now = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    projects = [
        {"id": i + 1, "name": name, "deidentify": i == 2, "description": "", "created_at": now}
        for i, (name, _) in enumerate(PROJECTS)
    ]
    weights = [w for _, w in PROJECTS]
    patient_rows = []
    for i in range(patients):
        project = rng.choices(projects, weights)[0]
        patient_rows.append(
            {
                "id": i + 1,
                "project_id": project["id"],
                "patient_key": f"PAT{i:06d}" if not project["deidentify"] else f"anon-{i:08x}",
                "patient_name": f"Patient^{i}",
                "sex": rng.choice("MF"),
                "birth_date": f"19{rng.randrange(30, 99)}0101",
            }
        )
    study_rows = []
    modalities = []
    for i in range(studies):
        patient = patient_rows[i] if i < patients else rng.choice(patient_rows)
        modality = rng.choices(["CT", "MR", "PT"], [0.5, 0.4, 0.1])[0]
        modalities.append(modality)
        day = dt.date(2010, 1, 1) + dt.timedelta(days=rng.randrange(5500))
        study_rows.append(
            {
                "id": i + 1,
                "patient_id": patient["id"],
                "study_uid": uid(rng),
                "study_date": day.strftime("%Y%m%d"),
                "description": rng.choice(STUDY_DESCRIPTIONS[modality]),
                "accession_number": f"A{rng.randrange(10**7):07d}",
            }
        )
    # volumes per study: 1–9 (5 on average), then nudged to the requested total
    counts = [rng.randint(1, 9) for _ in range(studies)]
    excess = sum(counts) - volumes
    while excess > 0:
        i = rng.randrange(studies)
        if counts[i] > 1:
            counts[i] -= 1
            excess -= 1
    while excess < 0:
        counts[rng.randrange(studies)] += 1
        excess += 1
    volume_rows = []
    vid = 0
    for s, n in enumerate(counts):
        modality = modalities[s]
        number = 1
        for _ in range(n):
            vid += 1
            flags: list[str] = []
            if rng.random() < 0.03:
                flags = rng.sample(sorted(FLAGS), rng.choice([1, 1, 1, 2]))
            split = ""
            if rng.random() < 0.04:
                split = rng.choice(["echo=1", "echo=2", "type=ORIGINAL", "type=DERIVED"])
            series_uid = uid(rng)
            description = rng.choice(SERIES_DESCRIPTIONS[modality])
            if rng.random() < 0.3:
                description += f" {rng.choice(['', 'iso', 'ce', 'ND', 'MPR'])}{rng.randrange(100)}"
            slices = rng.choice([1, 24, 60, 120, 300, 512])
            volume_rows.append(
                {
                    "id": vid,
                    "volume_uid": series_uid + (f".{vid}" if split else ""),
                    "study_id": s + 1,
                    "series_uid": series_uid,
                    "series_number": None if rng.random() < 0.01 else number,
                    "split": split,
                    "modality": modality,
                    "body_part": rng.choice(["CHEST", "HEAD", "ABDOMEN", "KNEE", ""]),
                    "description": description,
                    "manufacturer": rng.choice(["SIEMENS", "GE MEDICAL SYSTEMS", "Philips"]),
                    "slices": slices,
                    "rows": 512,
                    "columns": 512,
                    "spacing_z": 1.0,
                    "spacing_y": 0.7,
                    "spacing_x": 0.7,
                    "dtype": "int16",
                    "flags": flags,
                    "reasons": "; ".join(f"[{f}] {FLAGS[f]}" for f in flags),
                    "store_path": f"projects/p/{series_uid}/v{vid}.ome.zarr",
                    "checksum": f"sha256:{rng.getrandbits(128):032x}",
                    "content_key": f"{rng.getrandbits(128):032x}",
                    "n_instances": slices,
                    "timepoints": 1,
                    "ingested_at": now,
                }
            )
            if rng.random() < 0.8:
                number += 1
    return {
        "projects": projects,
        "patients": patient_rows,
        "studies": study_rows,
        "volumes": volume_rows,
    }


# -- the catalog code under test ------------------------------------------------------------------


class _Store:
    """The little of a store location the catalog needs when it is given a catalog URL."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.url = str(root)
        self.is_local = True

    def ensure_root(self) -> None:
        os.makedirs(self.root, exist_ok=True)

    def catalog_file(self) -> str:
        return os.path.join(self.root, "catalog.sqlite")


def current_module() -> types.ModuleType:
    import voxelhub.catalog

    return voxelhub.catalog


def baseline_module(rev: str) -> types.ModuleType:
    """``workspace/voxelhub/catalog.py`` at git revision ``rev``, as a separate module."""
    source = subprocess.run(
        ["git", "show", f"{rev}:workspace/voxelhub/catalog.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # it is given a catalog URL and a _Store: no need for the store classes of that time
    source = source.replace(
        "from voxelhub.store.location import StoreLocation", "StoreLocation = object"
    )
    module = types.ModuleType(f"voxelhub_catalog_{rev[:12]}")
    module.__file__ = f"{rev}:workspace/voxelhub/catalog.py"
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def build(module: types.ModuleType, url: str, root: Path, rows: dict[str, list]) -> dict[str, Any]:
    """Create the catalog with ``module``'s schema, bulk-insert ``rows``, reopen it as a writer.

    The reopen is what the data service and every ingest do (``Catalog(…)``, create=True): it
    runs the schema upgrade and, on SQLite, the statistics that the end of an ingest refreshes.
    """
    t0 = time.perf_counter()
    catalog = module.Catalog(_Store(root), url)
    created = time.perf_counter() - t0
    tables = module.Base.metadata.tables
    t0 = time.perf_counter()
    with catalog.engine.begin() as conn:
        for name in ("projects", "patients", "studies", "volumes"):
            chunk = 20_000
            for start in range(0, len(rows[name]), chunk):
                conn.execute(insert(tables[name]), rows[name][start : start + chunk])
    if catalog.engine.dialect.name == "postgresql":
        with catalog.engine.begin() as conn:
            for name in ("projects", "patients", "studies", "volumes"):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), max(id)) FROM {name}"
                    )
                )
            conn.execute(text("ANALYZE"))
    inserted = time.perf_counter() - t0
    catalog.close()
    t0 = time.perf_counter()
    module.Catalog(_Store(root), url).close()
    reopened = time.perf_counter() - t0
    return {"create_s": created, "insert_s": inserted, "reopen_s": reopened}


# -- PostgreSQL ----------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_server() -> Iterator[str | None]:
    """A throwaway cluster as `make test` starts one; yields its admin URL (None: no server)."""
    given = os.environ.get("VOXELHUB_BENCH_POSTGRES_URL")
    if given:
        yield given
        return
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not bins:
        yield None
        return
    pgbin = bins[-1].parent
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = Path(tempfile.mkdtemp(prefix="vhcatbench-pg."))
    run_as: list[str] = []
    if os.getuid() == 0:  # postgres refuses to run as root
        shutil.chown(folder, "nobody")
        run_as = ["runuser", "-u", "nobody", "--"]
    data = folder / "data"
    ctl = [*run_as, str(pgbin / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [*run_as, str(pgbin / "initdb"), "-D", str(data), "-U", "voxelhub", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *ctl,
                "-o",
                f"-k {folder} -h 127.0.0.1 -p {port}",
                "-l",
                f"{folder}/log",
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://voxelhub@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def new_database(admin_url: str, name: str) -> str:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def server_version(url: str) -> str:
    engine = create_engine(url)
    with engine.connect() as conn:
        version = str(conn.scalar(text("SHOW server_version")))
    engine.dispose()
    return version


# -- the queries -----------------------------------------------------------------------------------


def cases(catalog: Any, keyset: bool) -> list[tuple[str, str, Callable[[], Any]]]:
    """(name, what, call): what the widgets and the data service ask, each through the API."""
    sample = catalog.series(limit=1, offset=777).iloc[0]
    out: list[tuple[str, str, Callable[[], Any]]] = [
        ("first_page", f"series(limit={PAGE})", lambda: catalog.series(limit=PAGE)),
        (
            "offset_50000",
            f"series(limit={PAGE}, offset=50000)",
            lambda: catalog.series(limit=PAGE, offset=50_000),
        ),
    ]
    if keyset:
        cursor = catalog.series(limit=1, offset=49_999).attrs["next_cursor"]
        out.append(
            (
                "keyset_50000",
                f"series(limit={PAGE}, after=<cursor of row 50,000>): the same page",
                lambda: catalog.series(limit=PAGE, after=cursor),
            )
        )
    for term, what in SEARCHES:
        out.append(
            (
                f"search_{term.replace(' ', '_').replace('/', '')}",
                f"search({term!r}, limit={PAGE}): {what}",
                partial(catalog.search, term, limit=PAGE),
            )
        )
    if keyset:
        second = catalog.search("chest", limit=PAGE).attrs["next_cursor"]
        out.append(
            (
                "search_chest_page2",
                f"search('chest', limit={PAGE}, after=<cursor of page 1>)",
                lambda: catalog.search("chest", limit=PAGE, after=second),
            )
        )
    out += [
        ("studies_all", "studies(): all 20,000 in one frame", lambda: catalog.studies()),
        (
            "studies_project",
            "studies(project='neuro'): all 30 % in one frame",
            lambda: catalog.studies(project="neuro"),
        ),
        (
            "studies_modality",
            "studies(modality='PT'): all in one frame",
            lambda: catalog.studies(modality="PT"),
        ),
        (
            "studies_patient",
            "studies(patient=…)",
            lambda: catalog.studies(patient=sample["patient_id"]),
        ),
    ]
    if keyset:
        out += [
            (
                "studies_page",
                f"studies(limit={PAGE})",
                lambda: catalog.studies(limit=PAGE),
            ),
            (
                "studies_project_page",
                f"studies(project='neuro', limit={PAGE})",
                lambda: catalog.studies(project="neuro", limit=PAGE),
            ),
            (
                "studies_text_page",
                f"studies(text='knee', limit={PAGE})",
                lambda: catalog.studies(text="knee", limit=PAGE),
            ),
        ]
    out += [
        (
            "flag",
            f"series(flag='gantry_tilt', limit={PAGE}): 0.7 % of volumes",
            lambda: catalog.series(flag="gantry_tilt", limit=PAGE),
        ),
        (
            "project",
            f"series(project='neuro', limit={PAGE})",
            lambda: catalog.series(project="neuro", limit=PAGE),
        ),
        (
            "project_small",
            f"series(project='msk', limit={PAGE}): 10 % of volumes",
            lambda: catalog.series(project="msk", limit=PAGE),
        ),
        (
            "modality",
            f"series(modality='PT', limit={PAGE})",
            lambda: catalog.series(modality="PT", limit=PAGE),
        ),
        (
            "study",
            "series(study_uid=…)",
            lambda: catalog.series(study_uid=sample["study_uid"]),
        ),
        (
            "uid",
            "series(uid=<SeriesInstanceUID>)",
            lambda: catalog.series(uid=sample["series_uid"]),
        ),
        ("projects", "projects()", lambda: catalog.projects()),
    ]
    if keyset:
        out += [
            (
                "allowed_projects",
                f"series(projects=['neuro', 'msk'], modality='CT', limit={PAGE}): the service",
                lambda: catalog.series(projects=["neuro", "msk"], modality="CT", limit=PAGE),
            ),
            (
                "allowed_projects_search",
                f"series(projects=['neuro', 'msk'], text='flair', limit={PAGE})",
                lambda: catalog.series(projects=["neuro", "msk"], text="flair", limit=PAGE),
            ),
            (
                "patient",
                f"series(patient=…, limit={PAGE})",
                lambda: catalog.series(patient=sample["patient_id"], limit=PAGE),
            ),
        ]
    return out


def measure(call: Callable[[], Any], repeat: int) -> dict[str, Any]:
    rows = len(call())
    call()  # warm-up: compiled statement cache, pages in memory
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], 2),
        "min_ms": round(times[0], 2),
        "runs": repeat,
        "rows": rows,
    }


def run_cases(catalog: Any, keyset: bool, repeat: int, full_repeat: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, what, call in cases(catalog, keyset):
        results[name] = {"query": what, **measure(call, repeat)}
        print(
            f"    {name:26s} p50 {results[name]['p50_ms']:9.2f} ms  p95 {results[name]['p95_ms']:9.2f} ms"
        )
    results["series_all"] = {
        "query": "series(): all 100,000 in one frame (not a query the widgets or API make)",
        **measure(lambda: catalog.series(), full_repeat),
    }
    return results


def check_same_rows(new: Any, old: Any) -> dict[str, bool]:
    """The new queries find the rows the old ones found (search, project, modality)."""
    same = {}
    for term, _ in SEARCHES:
        if term == "t1_mprage":  # the old LIKE took '_' as a wildcard
            continue
        a = set(new.search(term)["volume_uid"])
        b = set(old.search(term)["volume_uid"])
        same[f"search {term!r}"] = a == b
    same["studies()"] = new.studies()["study_uid"].tolist() == old.studies()["study_uid"].tolist()
    same["flag (new: flags; old: reasons)"] = set(
        new.series(flag="gantry_tilt")["volume_uid"]
    ) == set(old.series(flag="gantry_tilt")["volume_uid"])
    return same


# -- main ----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(ValueError, OSError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model or platform.processor(),
        "memory_gib": round(mem / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "pandas": __import__("pandas").__version__,
    }


def run_backend(
    backend: str,
    url_for: Callable[[str], str],
    work: Path,
    rows: dict[str, list],
    modules: dict[str, types.ModuleType],
    args: argparse.Namespace,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    catalogs = {}
    urls = {}
    for label, module in modules.items():
        root = work / f"{backend}-{label}"
        shutil.rmtree(root, ignore_errors=True)
        url = url_for(label) if backend == "postgresql" else f"sqlite:///{root}/catalog.sqlite"
        urls[label] = url
        print(f"  {backend} / {label}: building {len(rows['volumes']):,} volumes …", flush=True)
        timings = build(module, url, root, rows)
        catalog = module.Catalog(_Store(root), url, create=False)
        catalogs[label] = catalog
        print(f"    built in {timings['insert_s']:.1f} s; timing queries", flush=True)
        out[label] = {
            "build": {k: round(v, 3) for k, v in timings.items()},
            "cases": run_cases(catalog, label == "current", args.repeat, args.full_repeat),
        }
        if backend == "sqlite":
            out[label]["file_mib"] = round((root / "catalog.sqlite").stat().st_size / 2**20, 1)
    if "baseline" in catalogs:
        out["same_rows_as_baseline"] = check_same_rows(catalogs["current"], catalogs["baseline"])
        # an existing catalog of the old schema, opened by the new code: the one-time upgrade
        root = work / f"{backend}-baseline"
        url = urls["baseline"]
        catalogs.pop("baseline").close()
        t0 = time.perf_counter()
        upgraded = modules["current"].Catalog(_Store(root), url)
        migrate_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        modules["current"].Catalog(_Store(root), url).close()
        reopen_s = time.perf_counter() - t0
        same = all(
            set(upgraded.search(term)["volume_uid"])
            == set(catalogs["current"].search(term)["volume_uid"])
            for term, _ in SEARCHES
        ) and set(upgraded.series(flag="gantry_tilt")["volume_uid"]) == set(
            catalogs["current"].series(flag="gantry_tilt")["volume_uid"]
        )
        print(f"    upgrade of the old catalog: {migrate_s:.2f} s (then opens in {reopen_s:.3f} s)")
        out["upgrade_old_catalog"] = {
            "first_open_s": round(migrate_s, 3),
            "next_open_s": round(reopen_s, 3),
            "search_and_flags_match_new_catalog": same,
        }
        upgraded.close()
    for catalog in catalogs.values():
        catalog.close()
    return out


def table(results: dict[str, Any]) -> str:
    backends = results["backends"]
    cols = []
    for backend, data in backends.items():
        if "baseline" in data:
            cols.append((backend, "baseline", "p50_ms", f"{backend} before p50"))
        cols.append((backend, "current", "p50_ms", f"{backend} p50"))
        cols.append((backend, "current", "p95_ms", f"{backend} p95"))
    names: list[str] = []
    for data in backends.values():
        for label in ("current", "baseline"):
            for name in data.get(label, {}).get("cases", {}):
                if name not in names:
                    names.append(name)
    queries: dict[str, str] = {}
    for data in backends.values():
        for name, case in data.get("current", {}).get("cases", {}).items():
            queries.setdefault(name, case["query"])
    lines = [
        "| query | " + " | ".join(c[3] + " (ms)" for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for name in names:
        cells = []
        for backend, label, key, _ in cols:
            case = backends[backend].get(label, {}).get("cases", {}).get(name)
            cells.append(f"{case[key]:.1f}" if case else "—")
        lines.append(f"| `{queries.get(name, name)}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volumes", type=int, default=100_000)
    parser.add_argument("--studies", type=int, default=None, help="default volumes / 5")
    parser.add_argument("--patients", type=int, default=None, help="default volumes / 20")
    parser.add_argument("--repeat", type=int, default=25, help="timed runs per query (≥ 20)")
    parser.add_argument("--full-repeat", type=int, default=5, help="timed runs of series()")
    parser.add_argument("--baseline", metavar="REV", help="also time catalog.py at git REV")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--work", type=Path, help="folder for the catalogs (default: temporary)")
    parser.add_argument("--markdown", action="store_true", help="print the saved table")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (server, files) on kill
    if args.markdown:
        print(table(json.loads(RESULTS.read_text())))
        return 0
    studies = args.studies or args.volumes // 5
    patients = args.patients or max(1, args.volumes // 20)
    results: dict[str, Any] = {
        "benchmark": "catalog",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "benchmarks/catalog.py", *sys.argv[1:]]),
        "machine": machine(),
        "dataset": {
            "volumes": args.volumes,
            "studies": studies,
            "patients": patients,
            "projects": [name for name, _ in PROJECTS],
            "page": PAGE,
        },
        "target_p50_ms": TARGET_MS,
        "notes": [],
        "backends": {},
    }
    rows = synthetic_rows(args.volumes, studies, patients)
    modules = {"current": current_module()}
    if args.baseline:
        modules["baseline"] = baseline_module(args.baseline)
        results["baseline_rev"] = subprocess.run(
            ["git", "rev-parse", args.baseline], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    work = args.work or Path(tempfile.mkdtemp(prefix="vhcatbench."))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results["backends"]["sqlite"] = run_backend(
            "sqlite", lambda label: "", work, rows, modules, args
        )
        if args.no_postgres:
            results["notes"].append("PostgreSQL skipped (--no-postgres)")
        else:
            with postgres_server() as admin:
                if admin is None:
                    results["notes"].append(
                        "PostgreSQL skipped: no /usr/lib/postgresql/*/bin/postgres "
                        "(apt-get install postgresql)"
                    )
                else:
                    results["machine"]["postgresql"] = server_version(admin)
                    results["backends"]["postgresql"] = run_backend(
                        "postgresql",
                        lambda label: new_database(admin, f"vhcatbench_{label}"),
                        work,
                        rows,
                        modules,
                        args,
                    )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(table(results))
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nsaved {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
