"""Backup and restore benchmark: `voxelhub backup` (restic) against tar, on the demo store.

Run from the repository root::

    .venv/bin/python benchmarks/backup.py              # about 2 min after the first ingest
    .venv/bin/python benchmarks/backup.py --markdown   # print the README table from the JSON

Input: the demo's store, i.e. every series in ``../shared/data/dicom`` ingested into project
``demo`` (``$VOXELHUB_SHARED`` replaces ``../shared``), made once in
``benchmarks/work/backup/store`` and reused.

Measured, each from a cold start of its process:

* ``voxelhub backup run``: the first (full) snapshot, a second one with nothing changed, and a
  third after one more series arrives (what an incremental run adds);
* ``voxelhub backup restore`` into an empty folder, and the **time to recover** (RTO): restore,
  then ``voxelhub fsck --verify`` re-reading every chunk against its checksum, so the store is
  known good before users come back;
* side by side: ``tar -cf`` and ``tar -czf`` of the same store (what a site would otherwise
  script), and ``tar -xf`` of the plain archive.

MB/s are of the store's size on disk (MB = 10^6 bytes).  Results go to
``benchmarks/results/backup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "backup.json"
WORK = REPO / "benchmarks" / "work" / "backup"
SHARED = Path(os.environ.get("VOXELHUB_SHARED", REPO.parent / "shared"))
DICOM = SHARED / "data" / "dicom"
LATE_SERIES = "mr_ge_fmri_classic"  # held back, then added before the third snapshot
VOXELHUB = [sys.executable, "-m", "voxelhub.cli"]


def timed(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def ingest(folder: Path, store: Path) -> None:
    """Not timed: the demo's own ingest (its one DIRFILE is rejected, as in `make demo`)."""
    from voxelhub import ingest as voxelhub_ingest

    report = voxelhub_ingest(folder, store, project="demo", progress=False)
    if not report.written and not report.unchanged:
        raise SystemExit(f"nothing ingested from {folder}: {report.summary()}")


def demo_store() -> Path:
    """The demo store without one series (added later as the 'new data' of an incremental run)."""
    store = WORK / "store"
    if (WORK / "store.done").exists():
        return store
    shutil.rmtree(store, ignore_errors=True)
    for series in sorted(DICOM.iterdir()):
        if series.is_dir() and series.name != LATE_SERIES:
            ingest(series, store)
    (WORK / "store.done").write_text("")
    return store


def run() -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    os.environ["VOXELHUB_SECRETS_DIR"] = str(WORK / "secrets")
    env = dict(os.environ)
    base = demo_store()
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=WORK))
    try:
        store = scratch / "store"
        shutil.copytree(base, store)
        stored = size_of(store)
        password = scratch / "password"
        password.write_text("benchmark password\n")
        env["VOXELHUB_BACKUP_REPO"] = str(scratch / "repo")
        env["VOXELHUB_BACKUP_PASSWORD_FILE"] = str(password)
        backup = [*VOXELHUB, "backup"]

        timed([*backup, "init"], env)
        full = timed([*backup, "run", str(store)], env)
        unchanged = timed([*backup, "run", str(store)], env)
        ingest(DICOM / LATE_SERIES, store)
        added_bytes = size_of(store) - stored
        incremental = timed([*backup, "run", str(store)], env)
        repo_bytes = size_of(scratch / "repo")

        restore = timed([*backup, "restore", "--to", str(scratch / "back")], env)
        verify = timed(
            [*VOXELHUB, "fsck", "--store", str(scratch / "back" / "store"), "--verify"], env
        )
        restored = size_of(scratch / "back" / "store")

        tar = timed(["tar", "-cf", str(scratch / "store.tar"), "-C", str(scratch), "store"])
        targz = timed(["tar", "-czf", str(scratch / "store.tar.gz"), "-C", str(scratch), "store"])
        (scratch / "untar").mkdir()
        untar = timed(["tar", "-xf", str(scratch / "store.tar"), "-C", str(scratch / "untar")])
        targz_bytes = (scratch / "store.tar.gz").stat().st_size
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def mbps(nbytes: int, seconds: float) -> float:
        return round(nbytes / 1e6 / seconds, 1)

    return {
        "store_mb": round(stored / 1e6, 1),
        "restored_store_mb": round(restored / 1e6, 1),
        "voxelhub_backup": {
            "full_s": round(full, 2),
            "full_mb_s": mbps(stored, full),
            "unchanged_s": round(unchanged, 2),
            "incremental_s": round(incremental, 2),
            "new_series_mb": round(added_bytes / 1e6, 1),
            "repository_mb": round(repo_bytes / 1e6, 1),
        },
        "voxelhub_restore": {
            "restore_s": round(restore, 2),
            "restore_mb_s": mbps(restored, restore),
            "fsck_verify_s": round(verify, 2),
            "rto_s": round(restore + verify, 2),
        },
        "tar": {
            "tar_s": round(tar, 2),
            "tar_mb_s": mbps(stored, tar),
            "tar_gz_s": round(targz, 2),
            "tar_gz_mb_s": mbps(stored, targz),
            "tar_gz_mb": round(targz_bytes / 1e6, 1),
            "untar_s": round(untar, 2),
            "untar_mb_s": mbps(stored, untar),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "restic": subprocess.run(
                ["restic", "version"], capture_output=True, text=True
            ).stdout.split(" compiled")[0],
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def markdown(results: dict[str, Any]) -> str:
    b, r, t = results["voxelhub_backup"], results["voxelhub_restore"], results["tar"]
    return "\n".join(
        [
            f"Demo store, {results['store_mb']} MB ({results['machine']['cpus']} cores):",
            "",
            "| | seconds | MB/s |",
            "|---|---:|---:|",
            f"| `voxelhub backup run`, first snapshot | {b['full_s']} | {b['full_mb_s']} |",
            f"| `voxelhub backup run`, nothing changed | {b['unchanged_s']} | |",
            f"| `voxelhub backup run`, one new series ({b['new_series_mb']} MB) "
            f"| {b['incremental_s']} | |",
            f"| `tar -cf` | {t['tar_s']} | {t['tar_mb_s']} |",
            f"| `tar -czf` | {t['tar_gz_s']} | {t['tar_gz_mb_s']} |",
            f"| `voxelhub backup restore` | {r['restore_s']} | {r['restore_mb_s']} |",
            f"| `tar -xf` | {t['untar_s']} | {t['untar_mb_s']} |",
            f"| time to recover: restore + `fsck --verify` | {r['rto_s']} | |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the README table")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(RESULTS.read_text())))
        return
    results = run()
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    print(markdown(results))


if __name__ == "__main__":
    main()
