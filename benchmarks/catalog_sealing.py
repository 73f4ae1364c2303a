"""Sealed catalog columns (issue 13): what sealing an identifiable project's catalog costs.

Run from the checkout::

    .venv/bin/python benchmarks/catalog_sealing.py            # 2,000 patients, 10,000 volumes
    .venv/bin/python benchmarks/catalog_sealing.py --quick    # 200 patients (smoke test)

Input: one SQLite catalog with two projects of the same synthetic rows (patients with a name,
ID, birth date; a study each with an accession number and description; five volumes each with
a series description), written through :meth:`Catalog.record_volume` as ingest does: a clear
identifiable project, the tool users would otherwise use (with the catalog on an encrypted
disk), and an encrypted one whose identifying columns are sealed.  Each query runs on both in
the process holding the key, alternating, and the median of ``--repeat`` runs is kept:

- ``record``: one ``record_volume`` (the catalog part of an ingest: seal, blind index, insert);
- ``page``: the first 100 volumes of the project (``series(project=…, limit=100)``);
- ``listing``: every volume of the project (``series(project=…)``);
- ``patient``: one patient's studies by ID (``studies(patient=…)``, blind index when sealed);
- ``search``: a text search (``series(text=…, limit=100)``): the trigram index when clear, every
  description of the project opened when sealed (the documented limitation);
- ``identities``: who every study is of (``identities(project=…)``).

Writes ``benchmarks/results/catalog_sealing.json`` (``--quick``: the work folder only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workspace"))

from voxelhub.catalog import Catalog  # noqa: E402
from voxelhub.store.encryption import use_keys  # noqa: E402
from voxelhub.store.keys import FileKeyProvider, store_key_ring  # noqa: E402
from voxelhub.store.location import open_location  # noqa: E402

WORDS = [
    "head",
    "neck",
    "chest",
    "abdomen",
    "pelvis",
    "knee",
    "spine",
    "brain",
    "contrast",
    "axial",
    "sagittal",
    "coronal",
]


def rows(rng: random.Random, n: int) -> list[tuple[dict, dict, list[dict]]]:
    """``n`` patients, each with one study of five volumes (the same rows for both projects)."""
    out = []
    for i in range(n):
        patient = {
            "patient_key": f"P{i:07d}",
            "patient_name": f"Doe^Jane{i}",
            "sex": rng.choice("FMO"),
            "birth_date": f"19{rng.randint(30, 99)}0{rng.randint(1, 9)}1{rng.randint(0, 9)}",
        }
        study = {
            "study_uid": f"1.2.3.{i}",
            "study_date": f"2026{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
            "description": " ".join(rng.sample(WORDS, 2)),
            "accession_number": f"ACC{i:08d}",
        }
        volumes = [
            {
                "series_uid": f"1.2.3.{i}.{k}",
                "series_number": k,
                "modality": rng.choice(["CT", "MR"]),
                "description": " ".join(rng.sample(WORDS, 3)),
                "slices": 100,
                "rows": 512,
                "columns": 512,
                "spacing_z": 1.0,
                "spacing_y": 0.5,
                "spacing_x": 0.5,
                "dtype": "int16",
                "checksum": "0" * 64,
                "content_key": "0" * 64,
                "n_instances": 100,
            }
            for k in range(5)
        ]
        out.append((patient, study, volumes))
    return out


def fill(catalog: Catalog, name: str, data: list, encrypt: bool) -> list[float]:
    """Write ``data`` into project ``name``; the seconds each ``record_volume`` took."""
    project = catalog.ensure_project(name, encrypt=encrypt)
    times = []
    for patient, study, volumes in data:
        for volume in volumes:
            row = {
                **volume,
                "volume_uid": f"{name}-{volume['series_uid']}",
                "store_path": f"projects/{name}/{volume['series_uid']}.ome.zarr",
            }
            start = time.perf_counter()
            catalog.record_volume(project, patient, study, row)
            times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.patients, args.repeat = 200, 2
    data = rows(random.Random(13), args.patients)
    with tempfile.TemporaryDirectory(prefix="vh-sealing-") as tmp:
        store = Path(tmp) / "store"
        key_file = FileKeyProvider.create(Path(tmp) / "keys" / "master.json").path
        store.mkdir()
        use_keys(store_key_ring(store, key_file))
        catalog = Catalog(open_location(str(store)))
        record = {
            "clear": fill(catalog, "clear", data, False),
            "sealed": fill(catalog, "sealed", data, True),
        }
        probe = data[len(data) // 2][0]["patient_key"]
        cases: dict[str, Callable[[str], Any]] = {
            "page": lambda p: catalog.series(project=p, limit=100),
            "listing": lambda p: catalog.series(project=p),
            "patient": lambda p: catalog.studies(project=p, patient=probe),
            "search": lambda p: catalog.series(project=p, text="knee", limit=100),
            "identities": lambda p: catalog.identities(project=p),
        }
        for case in cases.values():  # same answers on both sides, and warm caches
            clear, sealed = case("clear"), case("sealed")
            assert len(clear) == len(sealed) > 0, (len(clear), len(sealed))
        results: dict[str, Any] = {
            "record": {side: round(statistics.median(t) * 1000, 2) for side, t in record.items()}
        }
        for name, case in cases.items():
            results[name] = {"clear": [], "sealed": []}
            for i in range(args.repeat):
                for side in ("clear", "sealed") if i % 2 == 0 else ("sealed", "clear"):
                    start = time.perf_counter()
                    case(side)
                    results[name][side].append((time.perf_counter() - start) * 1000)
            results[name] = {s: round(statistics.median(v), 2) for s, v in results[name].items()}
        for row in results.values():
            row["ratio"] = round(row["sealed"] / row["clear"], 2)
        catalog.close()
        use_keys(None)
    out = {
        "what": "median ms per call, clear identifiable project vs sealed (encrypted) one",
        "patients": args.patients,
        "volumes_per_project": args.patients * 5,
        "repeat": args.repeat,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "platform": platform.platform(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
        },
        "results": results,
    }
    text = json.dumps(out, indent=1)
    folder = ROOT / "benchmarks" / ("work" if args.quick else "results")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "catalog_sealing.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
