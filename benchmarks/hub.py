"""Hub benchmark: the multi-user stack's start, spawn, Gateway cluster and a spawn storm.

Run as root from anywhere (the hub makes a unix user per hub user)::

    .venv/bin/python benchmarks/hub.py              # 20 concurrent users (≈ 2–3 min on 2 cores)
    .venv/bin/python benchmarks/hub.py --users 5    # a smaller storm
    .venv/bin/python benchmarks/hub.py --markdown   # print the table of the saved results

What it does, on free ports with a throwaway state folder (``/tmp/vhhubbench-*``), exactly as
``make hub-demo`` runs the stack (HTTPS, system users, SafeLocalBackend):

1. *hub start*: launch of ``jupyterhub`` until the hub API and the gateway's health check answer
   (the hub starts the proxy, the gateway and the idle culler);
2. *server spawn*: ``POST /hub/api/users/<u>/server`` until the server is ready, ``--repeat``
   times for one user (the first also creates the unix account);
3. *Gateway cluster*: in a kernel of that user's server, ``Gateway().new_cluster()`` and then
   ``scale(2)`` until 1 and 2 workers are connected (each worker is a process started as the user);
4. *spawn storm*: ``--users`` users' servers requested at the same moment; wall time until all are
   ready, each one's time, and memory.

Baselines measured in the same run (what a person would otherwise do on this machine):
``jupyter lab`` started by hand (until its API answers) against a hub spawn, and a
``distributed.LocalCluster`` of 2 worker processes against a Gateway cluster of 2.

Memory: *stack RSS* sums the resident memory of every process the hub started (hub, proxy,
gateway, culler, user servers, kernels, clusters); *system used* is the machine's used memory
(``psutil.virtual_memory().used``) minus what it was before the hub started.

Everything it creates is removed afterwards: processes, unix accounts, their groups, the state
folder.  Results go to ``benchmarks/results/hub.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime as dt
import grp
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import requests

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "hub.json"
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "extensions"))

from voxelhub_hub.client import HubBrowser, KernelSession  # noqa: E402
from voxelhub_hub.project_groups import remove_group  # noqa: E402
from voxelhub_hub.stack import HubStack  # noqa: E402
from voxelhub_hub.system_users import MANAGED_GROUP, remove_account  # noqa: E402

MIB = 2**20
TARGETS = {"spawn_s": 5.0, "cluster_s": 10.0}

CLUSTER_CODE = """
import json, time
from dask_gateway import Gateway
t0 = time.monotonic()
gateway = Gateway()
cluster = gateway.new_cluster()
t1 = time.monotonic()
cluster.scale(2)
client = cluster.get_client()
client.wait_for_workers(1, timeout=120)
t2 = time.monotonic()
client.wait_for_workers(2, timeout=120)
t3 = time.monotonic()
assert client.submit(sum, [1, 2]).result() == 3
client.close()
cluster.shutdown()
print(json.dumps({"new_cluster_s": t1 - t0, "first_worker_s": t2 - t0, "two_workers_s": t3 - t0}))
"""

LOCALCLUSTER_CODE = """
import json, time
from distributed import Client, LocalCluster
t0 = time.monotonic()
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                       dashboard_address=None)
client = Client(cluster)
client.wait_for_workers(2, timeout=120)
t1 = time.monotonic()
assert client.submit(sum, [1, 2]).result() == 3
client.close(); cluster.close()
print(json.dumps({"two_workers_s": t1 - t0}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stack_rss_mb(stack: HubStack) -> float:
    total = 0
    for p in stack.processes():
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return round(total / MIB, 1)


def used_mb() -> float:
    return psutil.virtual_memory().used / MIB


class Admin:
    """The hub's REST API with an admin's token."""

    def __init__(self, stack: HubStack, token: str) -> None:
        self.api = stack.url + "/hub/api"
        self.verify = stack.verify
        self.headers = {"Authorization": f"token {token}"}

    def call(self, method: str, path: str, ok: tuple[int, ...] = (200, 201, 202, 204)) -> Any:
        r = requests.request(
            method, self.api + path, headers=self.headers, verify=self.verify, timeout=60
        )
        if r.status_code not in ok:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:300]}")
        return r.json() if r.content else None

    def spawn(self, name: str, timeout: float = 300, poll: float = 0.1) -> float:
        """Request ``name``'s server; return seconds until the hub reports it ready."""
        t0 = time.monotonic()
        self.call("POST", f"/users/{name}/server", ok=(201, 202))
        while time.monotonic() - t0 < timeout:
            server = self.call("GET", f"/users/{name}")["servers"].get("")
            if server and server["ready"]:
                return time.monotonic() - t0
            time.sleep(poll)
        raise TimeoutError(f"server of {name} not ready after {timeout:.0f} s")

    def stop(self, name: str, timeout: float = 120) -> None:
        self.call("DELETE", f"/users/{name}/server", ok=(202, 204))
        t0 = time.monotonic()
        while self.call("GET", f"/users/{name}")["servers"] and time.monotonic() - t0 < timeout:
            time.sleep(0.2)

    def token_for(self, name: str) -> str:
        body = self.api + f"/users/{name}/tokens"
        r = requests.post(
            body,
            headers=self.headers,
            json={"note": "benchmark", "expires_in": 3600},
            verify=self.verify,
            timeout=60,
        )
        r.raise_for_status()
        return str(r.json()["token"])


def jupyterlab_start_s(workdir: Path) -> float:
    """Seconds from ``jupyter lab`` launch until its REST API answers (the hand-made baseline)."""
    port, token = free_port(), secrets.token_hex(16)
    cmd = [
        str(VENV_BIN / "jupyter-lab"),
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={workdir}",
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - t0 < 120:
            try:
                r = requests.get(
                    f"http://127.0.0.1:{port}/api/status",
                    headers={"Authorization": f"token {token}"},
                    timeout=2,
                )
                if r.ok:
                    return time.monotonic() - t0
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise TimeoutError("jupyter lab did not answer in 120 s")
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def localcluster_s() -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", LOCALCLUSTER_CODE],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=tempfile.gettempdir(),
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def run(users: int, repeat: int) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    admin_name, project = f"vhbadm{tag}", f"bench{tag}"
    names = [f"vhb{tag}u{i:02d}" for i in range(users)]
    bench_user = names[0]
    group_existed = _group_exists(MANAGED_GROUP)
    state = Path(tempfile.mkdtemp(prefix="vhhubbench-"))
    os.chmod(state, 0o755)
    result: dict[str, Any] = {}
    baseline_used = used_mb()
    stack = HubStack(
        state / "hub", admins=[admin_name], projects={project: names}, spawner="system", tls=True
    )
    try:
        result["hub_start_s"] = round(stack.start(timeout=180), 2)
        time.sleep(3)  # let the services settle before measuring memory
        result["memory_idle"] = {
            "stack_rss_mb": stack_rss_mb(stack),
            "system_used_mb": round(used_mb() - baseline_used),
        }
        print(f"hub start: {result['hub_start_s']} s", flush=True)

        browser = HubBrowser(stack.url, stack.verify)
        password = secrets.token_urlsafe(18)
        browser.signup(admin_name, password)
        browser.login(admin_name, password, next_url="/hub/home")  # no server for the admin
        admin = Admin(stack, browser.new_token(note="benchmark"))

        spawns = []
        for i in range(repeat):
            spawns.append(admin.spawn(bench_user))
            print(f"spawn {i + 1}/{repeat}: {spawns[-1]:.2f} s", flush=True)
            if i < repeat - 1:
                admin.stop(bench_user)
        result["spawn_s"] = {"runs": [round(s, 2) for s in spawns], **summary(spawns)}
        result["memory_one_user"] = {"stack_rss_mb": stack_rss_mb(stack)}

        token = admin.token_for(bench_user)
        clusters = []
        with KernelSession(stack.url, bench_user, token, cafile=stack.cafile) as kernel:
            for _ in range(repeat):
                out = kernel.execute(CLUSTER_CODE, timeout=300)
                clusters.append(json.loads(out.strip().splitlines()[-1]))
                print(f"gateway cluster: {clusters[-1]}", flush=True)
        result["gateway_cluster"] = {
            key: summary([c[key] for c in clusters])
            for key in ("new_cluster_s", "first_worker_s", "two_workers_s")
        }
        admin.stop(bench_user)

        t0 = time.monotonic()
        peak = {"rss": 0.0}
        with cf.ThreadPoolExecutor(users) as pool:
            # poll gently: 20 pollers at 10 Hz would load the hub they measure
            futures = [pool.submit(admin.spawn, n, 600, 0.5) for n in names]
            while not all(f.done() for f in futures):
                peak["rss"] = max(peak["rss"], stack_rss_mb(stack))
                time.sleep(1)
        wall = time.monotonic() - t0
        each, failed = [], []
        for name, f in zip(names, futures, strict=True):
            try:
                each.append(f.result())
            except Exception as exc:
                failed.append(f"{name}: {exc}")
        time.sleep(2)
        rss = stack_rss_mb(stack)
        servers = [
            p
            for p in stack.processes()
            if any("jupyterhub-singleuser" in part for part in _cmdline(p))
        ]
        per_server = [p.memory_info().rss / MIB for p in servers]
        result["storm"] = {
            "users": users,
            "succeeded": len(each),
            "failed": failed,
            "wall_s": round(wall, 2),
            "each_s": summary(each) if each else {},
            "stack_rss_mb": rss,
            "stack_rss_peak_mb": round(max(peak["rss"], rss), 1),
            "per_server_rss_mb": round(statistics.median(per_server), 1) if per_server else None,
            "system_used_mb": round(used_mb() - baseline_used),
        }
        print(f"storm: {result['storm']}", flush=True)
    finally:
        survivors = stack.stop()
        for name in [admin_name, *names]:
            try:
                remove_account(name)
            except Exception as exc:  # report, keep cleaning
                print(f"could not remove {name}: {exc}", file=sys.stderr)
        remove_group(project)
        if (
            not group_existed
            and _group_exists(MANAGED_GROUP)
            and not grp.getgrnam(MANAGED_GROUP).gr_mem
        ):
            subprocess.run(["groupdel", MANAGED_GROUP], check=True)
        shutil.rmtree(state, ignore_errors=True)
        result["survivors_after_stop"] = survivors

    lab = [jupyterlab_start_s(Path(tempfile.gettempdir())) for _ in range(repeat)]
    local = [localcluster_s()["two_workers_s"] for _ in range(repeat)]
    result["baselines"] = {
        "jupyterlab_by_hand_start_s": summary(lab),
        "localcluster_two_workers_s": summary(local),
    }
    return result


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def machine() -> dict[str, Any]:
    import dask_gateway_server
    import jupyterhub
    import jupyterlab

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        "versions": {
            "python": platform.python_version(),
            "jupyterhub": jupyterhub.__version__,
            "jupyterlab": jupyterlab.__version__,
            "dask-gateway-server": dask_gateway_server.__version__,
        },
    }


def table(data: dict[str, Any]) -> str:
    r = data["results"]
    storm = r["storm"]
    rows = [
        ("hub start (hub API + gateway up)", f"{r['hub_start_s']:.1f} s", "", ""),
        (
            "server spawn (request → ready), median",
            f"{r['spawn_s']['median']:.2f} s",
            f"`jupyter lab` by hand: {r['baselines']['jupyterlab_by_hand_start_s']['median']:.2f} s",
            f"≤ {TARGETS['spawn_s']:.0f} s",
        ),
        (
            "Gateway cluster: new_cluster()",
            f"{r['gateway_cluster']['new_cluster_s']['median']:.2f} s",
            "",
            "",
        ),
        (
            "Gateway cluster: 2 workers connected",
            f"{r['gateway_cluster']['two_workers_s']['median']:.2f} s",
            f"LocalCluster(2): {r['baselines']['localcluster_two_workers_s']['median']:.2f} s",
            f"≤ {TARGETS['cluster_s']:.0f} s",
        ),
        (
            f"{storm['users']} spawns at once: all ready",
            f"{storm['wall_s']:.1f} s ({storm['succeeded']}/{storm['users']} ok)",
            "",
            "all succeed",
        ),
        (
            "… each (min / median / max)",
            "{min:.1f} / {median:.1f} / {max:.1f} s".format(**storm["each_s"])
            if storm["each_s"]
            else "-",
            "",
            "",
        ),
        ("memory: idle stack (RSS)", f"{r['memory_idle']['stack_rss_mb']:.0f} MB", "", ""),
        (
            f"memory: stack + {storm['users']} servers (RSS)",
            f"{storm['stack_rss_mb']:.0f} MB (peak {storm['stack_rss_peak_mb']:.0f})",
            "",
            "",
        ),
        ("memory: one user server (RSS, median)", f"{storm['per_server_rss_mb']:.0f} MB", "", ""),
    ]
    out = ["| step | VoxelHub hub | baseline (same run) | target |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20, help="servers spawned at once [20]")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the single measurements")
    parser.add_argument("--markdown", action="store_true", help="print the saved results' table")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file [{RESULTS}]")
    args = parser.parse_args(argv)
    if args.markdown:
        print(table(json.loads(args.output.read_text())))
        return 0
    if os.geteuid() != 0:
        parser.error("needs root: every hub user is a unix user (useradd, setuid)")
    started = dt.datetime.now(dt.UTC)
    results = run(args.users, args.repeat)
    data = {
        "benchmark": "hub",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "benchmarks/hub.py", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "targets": TARGETS,
        "notes": [
            "one machine, HTTPS on 127.0.0.1, LocalProcessSpawner with a unix user per hub user, "
            "SafeLocalBackend (schedulers and workers as the user)",
            "spawn = POST /hub/api/users/<u>/server until the hub reports ready; the first run "
            "also creates the unix account",
            "gateway cluster times are measured inside a kernel of the user's server",
            "stack RSS sums every process the hub started; system used is the machine's used "
            "memory minus before the hub started (other work on the machine adds noise)",
        ],
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(data, indent=2) + "\n")
    print()
    print(table(data))
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
