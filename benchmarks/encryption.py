"""Encryption at rest: what sealing every chunk costs, end to end, on a real CT.

Run from anywhere::

    .venv/bin/python benchmarks/encryption.py            # 7 ingests and 21 reads per side (42 through the service)
    .venv/bin/python benchmarks/encryption.py --quick    # 1 and 2 (smoke test)

Input: the real ``ct_philips_ingenuity_phantom`` (140 × 512² CT, 72 MB of DICOM) from the shared
data folder (``$VOXELHUB_SHARED`` or ``../shared``), ingested into a clear project and into an
encrypted one of the same store (``voxelhub.ingest(..., encrypt=True)``), side by side: the
tool users would otherwise use is the same ingest without encryption (disk encryption does not
show up in a process's time).  Rounds alternate clear and encrypted, each round in the other
order, so load drifts hit both; the machine is shared, so each row gives the median, the best
run of each side, and the median of the rounds' own ratios (encrypted against the clear run
next to it), and the load average is recorded before and after.

- ``write``: ``voxelhub.ingest`` of the series, wall time (indexing, decoding, pyramid, writing,
  read-back verification, catalog), into a fresh store each time, after one untimed ingest of
  each kind (the first ingest in a process pays for imports and was 2x slower).
- ``read``: ``open_series(uid).values`` of level 0 in the process holding the key (ingest,
  notebooks on a laptop), and ``read slab``: 16 slices of it.
- ``service``: ``open_series(uid).values`` of level 0 by a hub user through the real stack
  (``HubStack``: the data service under its own account holding the key file, the user's
  ``ServiceCatalog`` with her hub token, no key in the reading process), clear against
  encrypted.  Needs root (unix accounts); skipped otherwise or with ``--no-service``.
- ``serve``: what the data service does to hand every inner chunk of level 0 to users, one
  request per inner chunk (the worst case; ``ServiceStore`` merges neighbours): for the clear
  volume a shard-index read per shard and a ``pread`` per inner chunk; for the encrypted one
  :func:`voxelhub_data.decrypted_view.read` and a one-chunk range of its view (index plan
  cached, ``pread``, AES-GCM).  Over HTTP both add the same request handling on top.
  ``serve shards``: the same for a full read, each level-0 shard requested whole (what
  ``ServiceStore`` asks for when a read covers a shard): a ``pread`` of the file against the
  view decrypting all its inner chunks.

Writes ``benchmarks/results/encryption.json`` (``--quick``: the work folder only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "encryption.json"
WORK = REPO / "benchmarks" / "work"
SHARED = Path(os.environ.get("VOXELHUB_SHARED", REPO.parent / "shared"))
SERIES = SHARED / "data" / "dicom" / "ct_philips_ingenuity_phantom"
sys.path.insert(0, str(REPO / "extensions"))


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ingest_once(folder: Path, key_file: Path, encrypt: bool) -> tuple[float, Path, str]:
    from voxelhub import ingest, open_catalog
    from voxelhub.store.encryption import use_keys

    use_keys(None)
    store = folder / ("sealed" if encrypt else "clear")
    shutil.rmtree(store, ignore_errors=True)
    project = "sealed" if encrypt else "clear"
    seconds = timed(
        lambda: ingest(
            SERIES, store, project=project, encrypt=encrypt, key_file=key_file, progress=False
        )
    )
    cat = open_catalog(store)
    uid = str(cat.series().volume_uid.iloc[0])
    cat.close()
    return seconds, store, uid


def read_times(store: Path, uid: str) -> tuple[float, float, float, int]:
    """Wall time of a full level-0 read and of 16 slices, and the CPU time (all the process's
    threads) of the full read: other work on the machine stretches wall time far more."""
    from voxelhub import open_catalog

    cat = open_catalog(store)
    volume = cat.open_series(uid)
    cpu = time.process_time()
    full = timed(lambda: volume.values)
    cpu = time.process_time() - cpu
    slab = timed(lambda: volume[60:76].values)
    nbytes = int(volume.nbytes)
    cat.close()
    return full, slab, cpu, nbytes


def serve_time(store: Path, uid: str) -> float:
    """Every inner chunk of level 0 as the service hands it out (see the module docstring)."""
    import math

    import numpy as np
    from voxelhub_data import decrypted_view, paths

    from voxelhub import open_catalog

    cat = open_catalog(store)
    rel = cat.stored_volume(uid).store_path
    cat.close()
    meta = json.loads((store / rel / "0" / "zarr.json").read_text())
    shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
    inner = meta["codecs"][0]["configuration"]["chunk_shape"]
    per = [s // i for s, i in zip(shard, inner, strict=True)]
    grid = [math.ceil(n / c) for n, c in zip(meta["shape"], inner, strict=True)]
    volume = paths.parse(rel)
    reader = decrypted_view.LocalVolume(str(store), volume)
    encrypted = "aes256gcm" in json.dumps(meta)
    n_index = 16 * math.prod(per) + 4
    start = time.perf_counter()
    for z in range(grid[0]):
        for y in range(grid[1]):
            for x in range(grid[2]):
                name = f"0/c/{z // per[0]}/{y // per[1]}/{x // per[2]}"
                first = (z % per[0], y % per[1], x % per[2]) == (0, 0, 0)
                if encrypted:  # each request asks the view again, as the service does
                    view = decrypted_view.read(paths.parse(f"{rel}/{name}"), reader)
                    assert view is not None
                    with view:
                        if first:
                            raw = view.read(view.size - n_index, view.size)
                            index = np.frombuffer(raw[:-4], "<u8").reshape((*per, 2))
                        at = index[z % per[0], y % per[1], x % per[2]]
                        offset, length = (int(v) for v in at)
                        view.read(offset, offset + length)
                    continue
                fd = reader.open(name)  # per request, as the service opens the key
                try:
                    if first:
                        n = os.fstat(fd).st_size
                        raw = os.pread(fd, n_index, n - n_index)
                        index = np.frombuffer(raw[:-4], "<u8").reshape((*per, 2))
                    offset, length = (int(v) for v in index[z % per[0], y % per[1], x % per[2]])
                    os.pread(fd, length, offset)
                finally:
                    os.close(fd)
    return time.perf_counter() - start


def serve_shards_time(store: Path, uid: str) -> float:
    """Every level-0 shard whole, as the service hands it out (see the module docstring)."""
    from voxelhub_data import decrypted_view, paths

    from voxelhub import open_catalog

    cat = open_catalog(store)
    rel = cat.stored_volume(uid).store_path
    cat.close()
    shards = sorted((store / rel / "0" / "c").rglob("*"))
    names = [s.relative_to(store / rel).as_posix() for s in shards if s.is_file()]
    reader = decrypted_view.LocalVolume(str(store), paths.parse(rel))
    encrypted = "aes256gcm" in (store / rel / "0" / "zarr.json").read_text()
    start = time.perf_counter()
    for name in names:
        if not encrypted:  # as a service holding no keys reads a key
            fd = reader.open(name)
            try:
                os.pread(fd, os.fstat(fd).st_size, 0)
            finally:
                os.close(fd)
            continue
        view = decrypted_view.read(paths.parse(f"{rel}/{name}"), reader)
        assert view is not None
        with view:
            view.read(0, view.size)
    return time.perf_counter() - start


def service_times(
    key_file: Path, reads: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[float]]]:
    """Level 0 through the real data service, clear and encrypted, alternating: the whole
    read, the part of it that opened the volume (catalog row, metadata), and then 16 slices
    of the volume already open.

    In a throwaway folder under /tmp that the hub's accounts can pass through (0755)."""
    import secrets
    import subprocess

    import numpy as np
    from voxelhub_hub.client import HubBrowser
    from voxelhub_hub.project_groups import remove_group
    from voxelhub_hub.stack import HubStack
    from voxelhub_hub.system_users import remove_account, remove_managed_group_if_unused

    import voxelhub
    from voxelhub.store.encryption import use_keys

    tag = secrets.token_hex(3)
    admin_name, user, account = f"vebadm{tag}", f"veb{tag}", f"vhencb{tag}"
    groups = {f"clear{tag}": [user], f"sealed{tag}": [user]}
    folder = Path(tempfile.mkdtemp(prefix="vhencbench-"))
    os.chmod(folder, 0o755)
    state = folder / "hub"
    state.mkdir(mode=0o755)
    keys = folder / "hubkeys"
    keys.mkdir(mode=0o711)
    hub_key = keys / "master.json"
    shutil.copy(key_file, hub_key)
    store = folder / "hubstore"
    uids = {}
    for project, encrypt in zip(groups, (False, True), strict=True):
        voxelhub.ingest(
            SERIES, store, project=project, encrypt=encrypt, key_file=hub_key, progress=False
        )
    use_keys(None)
    cat = voxelhub.open_catalog(store)
    frame = cat.series()
    for side, project in zip(("clear", "encrypted"), groups, strict=True):
        uids[side] = str(frame[frame.project == project].volume_uid.iloc[0])
    cat.close()
    stack = HubStack(
        state,
        admins=[admin_name],
        projects=groups,
        spawner="system",
        tls=True,
        extra_env={"VOXELHUB_DATA_USER": account, "VOXELHUB_KEY_FILE": str(hub_key)},
    )
    stack.store = str(store)
    times: dict[str, list[float]] = {"clear": [], "encrypted": []}
    opening: dict[str, list[float]] = {"clear": [], "encrypted": []}
    slab: dict[str, list[float]] = {"clear": [], "encrypted": []}
    try:
        stack.start(timeout=180)
        admin = HubBrowser(stack.url, stack.verify)
        password = secrets.token_urlsafe(18)
        admin.signup(admin_name, password)
        admin.login(admin_name, password, next_url="/hub/home")
        for group, members in groups.items():
            admin.api("POST", f"/groups/{group}/users", json={"users": members}, ok=(200, 201))
        body = {"note": "encryption benchmark", "expires_in": 3600}
        token = admin.api("POST", f"/users/{user}/tokens", json=body)["token"]
        service = voxelhub.open_catalog(stack.data_url, storage_options={"token": token})
        sums = {}
        for run in range(reads + 1):  # the first round warms both up
            for side in ("clear", "encrypted") if run % 2 == 0 else ("encrypted", "clear"):
                start = time.perf_counter()
                volume = service.open_series(uids[side])
                opened = time.perf_counter()
                values = volume.values
                done = time.perf_counter()
                band = volume[60:76].values  # a viewer's band: ranges of shards, not all
                assert band.shape[0] == 16
                if run:
                    times[side].append(done - start)
                    opening[side].append(opened - start)
                    slab[side].append(time.perf_counter() - done)
                sums[side] = float(np.asarray(values, dtype=np.float64).sum())
        if sums["clear"] != sums["encrypted"]:
            raise RuntimeError(f"the service returned other voxels: {sums}")
    finally:
        stack.stop()
        for name in (admin_name, user):
            remove_account(name)
        remove_managed_group_if_unused()
        for cmd in (["userdel", account], ["groupdel", account]):
            subprocess.run(cmd, capture_output=True, check=False)
        for group in groups:
            remove_group(group)
        shutil.rmtree(folder, ignore_errors=True)
    return times, opening, slab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-service", action="store_true", help="skip the real-stack part")
    args = parser.parse_args()
    if not SERIES.is_dir():
        raise SystemExit(f"missing {SERIES}")
    from voxelhub.store.encryption import use_keys
    from voxelhub.store.keys import FileKeyProvider, store_key_ring

    WORK.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="encryption-", dir=WORK))
    rounds, reads = (1, 2) if args.quick else (7, 21)
    load_before = os.getloadavg()
    service: dict[str, list[float]] = {}
    service_open: dict[str, list[float]] = {}
    service_slab: dict[str, list[float]] = {}
    try:
        key_file = FileKeyProvider.create(folder / "secret" / "master.json").path
        writes: dict[str, list[float]] = {"clear": [], "encrypted": []}
        stores: dict[str, tuple[Path, str]] = {}
        for encrypt in (False, True):  # untimed: imports, worker start-up, page cache
            ingest_once(folder, key_file, encrypt)
        for r in range(rounds):
            order = (("clear", False), ("encrypted", True))
            for side, encrypt in order if r % 2 == 0 else order[::-1]:
                seconds, store, uid = ingest_once(folder, key_file, encrypt)
                writes[side].append(seconds)
                stores[side] = (store, uid)
        use_keys(store_key_ring(stores["encrypted"][0], key_file))
        full: dict[str, list[float]] = {"clear": [], "encrypted": []}
        slab: dict[str, list[float]] = {"clear": [], "encrypted": []}
        full_cpu: dict[str, list[float]] = {"clear": [], "encrypted": []}
        serve: dict[str, list[float]] = {"clear": [], "encrypted": []}
        shards: dict[str, list[float]] = {"clear": [], "encrypted": []}
        nbytes = 0
        for r in range(reads):
            for side in ("clear", "encrypted") if r % 2 == 0 else ("encrypted", "clear"):
                store, uid = stores[side]
                f, s, c, nbytes = read_times(store, uid)
                full[side].append(f)
                full_cpu[side].append(c)
                slab[side].append(s)
                serve[side].append(serve_time(store, uid))
                shards[side].append(serve_shards_time(store, uid))
        use_keys(None)
        if os.geteuid() == 0 and not args.no_service:
            service, service_open, service_slab = service_times(
                key_file, 2 * reads
            )  # the noisiest row
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    mib = nbytes / 2**20

    def row(samples: dict[str, list[float]], volume_mib: float | None) -> dict[str, Any]:
        med = {k: statistics.median(v) for k, v in samples.items()}
        out: dict[str, Any] = {
            "clear_s": round(med["clear"], 3),
            "encrypted_s": round(med["encrypted"], 3),
            "slower_percent": round(100 * (med["encrypted"] / med["clear"] - 1), 1),
            # best of the runs: on a shared 2-core machine the least disturbed, so the steadiest
            "clear_best_s": round(min(samples["clear"]), 3),
            "encrypted_best_s": round(min(samples["encrypted"]), 3),
            "slower_percent_best": round(
                100 * (min(samples["encrypted"]) / min(samples["clear"]) - 1), 1
            ),
            # each encrypted run against the clear run beside it (same round): a load swing
            # that hits a whole round cancels out
            "slower_percent_paired": round(
                100
                * statistics.median(
                    e / c - 1 for e, c in zip(samples["encrypted"], samples["clear"], strict=True)
                ),
                1,
            ),
            "samples": {k: [round(x, 3) for x in v] for k, v in samples.items()},
        }
        if volume_mib:
            out["clear_mib_s"] = round(volume_mib / med["clear"], 1)
            out["encrypted_mib_s"] = round(volume_mib / med["encrypted"], 1)
        return out

    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg": [round(x, 2) for x in os.getloadavg()],
        },
        "input": f"{SERIES.name}: level 0 {mib:.1f} MiB int16",
        "write_ingest": row(writes, mib),
        "read_full_level0": row(full, mib),
        "read_full_level0_cpu": row(full_cpu, None),
        "read_16_slices": row(slab, None),
        "serve_all_inner_chunks": row(serve, mib),
        "serve_level0_shards_whole": row(shards, mib),
        **({"read_through_service": row(service, mib)} if service else {}),
        **({"read_through_service_open_part": row(service_open, None)} if service else {}),
        **({"read_16_slices_through_service": row(service_slab, None)} if service else {}),
        "target": "encrypted at most 15 % slower end to end",
    }
    text = json.dumps(result, indent=1)
    print(text)
    out = WORK / "encryption-quick.json" if args.quick else RESULTS
    out.write_text(text + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
