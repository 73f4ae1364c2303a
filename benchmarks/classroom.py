"""Classroom benchmark (issue 12): a class works through an exercise on one hub, then one autograde.

Run as root from anywhere (the hub makes a unix user per hub user)::

    .venv/bin/python benchmarks/classroom.py                  # 30 students, 10 at a time
    .venv/bin/python benchmarks/classroom.py --students 8 --at-once 4
    .venv/bin/python benchmarks/classroom.py --markdown       # the table of the saved results

What it does, on free ports with a throwaway state folder, as ``make hub-demo`` runs the stack
(HTTPS, a unix user per hub user, the data service, the nbgrader exchange service):

1. the real Philips phantom CT is ingested de-identified into the course's project;
2. ``voxelhub course create`` (the library call) makes the course from the roster: ``--students``
   students, an instructor and the grader account;
3. the grader's server generates and releases sample notebook 2's assignment
   (``sample_notebooks/course/source/teaching_exercise``);
4. *class*: every student, ``--at-once`` of them at the same time, has their server spawned, then
   in a kernel of it fetches the exercise (``nbgrader fetch_assignment`` through the exchange),
   writes the right answers, runs the whole notebook (nbclient, a second kernel in their server,
   reading the cohort through the data service) and submits it;
5. *autograde*: one pass in the grader's server: ``nbgrader collect`` and ``autograde`` of every
   submission, with the hidden tests; the scores are read from the gradebook.

Measured: wall time of the class and of the autograde pass, each student's phases, failures
(target 0), the scores (every student should get full marks), the hub process's memory and the
whole stack's (every process the hub started: hub, proxy, services, servers, kernels), and the
machine's used memory.  Baselines in the same run (what the class would do without the hub):
the notebook run by nbclient on a local store by one person, and ``nbgrader autograde`` of the
same number of submissions in a plain course folder on the local store.

Everything it creates is removed afterwards: processes, unix accounts, their groups, the state
folder.  Results go to ``benchmarks/results/classroom.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "classroom.json"
VENV_BIN = Path(sys.executable).parent
DICOM = Path(os.environ.get("VOXELHUB_SHARED", REPO.parent / "shared")) / "data" / "dicom"
PHANTOM = DICOM / "ct_philips_ingenuity_phantom"
ASSIGNMENT = "teaching_exercise"
SOURCE = REPO / "sample_notebooks" / "course" / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
sys.path.insert(0, str(REPO / "extensions"))

from voxelhub_hub.client import HubBrowser, run_code  # noqa: E402
from voxelhub_hub.project_groups import remove_group  # noqa: E402
from voxelhub_hub.stack import HubStack  # noqa: E402
from voxelhub_hub.system_users import remove_account, remove_managed_group_if_unused  # noqa: E402

MIB = 2**20
TARGETS = {"failures": 0}
#: the right answers, one per answer cell (as in tests/hub/test_teaching_assignment.py)
ANSWERS = [
    "threshold = -450\nbody = volume > threshold\nbody_ml = float(body.sum()) * "
    "float(np.prod(volume.attrs['spacing_zyx'])) / 1000",
    "body_mean_hu = float(volume.where(body).mean())",
    "largest_slice = int(body.sum(dim=('y', 'x')).values.argmax())",
]

GRADER_RELEASE = r"""
import json, os, subprocess
course = os.path.expanduser("~/course")
os.makedirs(f"{course}/source/{assignment}", exist_ok=True)
with open(f"{course}/source/{assignment}/{assignment}.ipynb", "w") as f:
    f.write(source)
with open(f"{course}/nbgrader_config.py", "w") as f:
    f.write(f"c = get_config()\nc.CourseDirectory.course_id = {course_id!r}\n"
            "c.Execute.timeout = 600\n")
for step in ("generate_assignment", "release_assignment"):
    r = subprocess.run(["nbgrader", step, assignment, *(["--force"] if step[0] == "g" else [])],
                       cwd=course, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
print("RELEASED")
"""

STUDENT = r"""
import json, os, subprocess, time
import nbformat
from nbclient import NotebookClient
home, t = os.path.expanduser("~"), {}

def nbgrader(*args):
    r = subprocess.run(["nbgrader", *args], cwd=home, capture_output=True, text=True)
    assert r.returncode == 0, f"nbgrader {args[0]}: " + r.stderr[-2000:]

t0 = time.monotonic()
nbgrader("fetch_assignment", assignment, "--course", course_id)
t["fetch_s"] = time.monotonic() - t0
path = os.path.join(home, assignment, assignment + ".ipynb")
nb = nbformat.read(path, as_version=4)
todo = iter(answers)
for cell in nb.cells:
    if "raise NotImplementedError()" in cell.source:
        cell.source = cell.source.replace("raise NotImplementedError()", next(todo))
t0 = time.monotonic()
NotebookClient(nb, timeout=600, kernel_name="python3",
               resources={"metadata": {"path": os.path.dirname(path)}}).execute()
t["run_s"] = time.monotonic() - t0
nbformat.write(nb, path)
t0 = time.monotonic()
nbgrader("submit", assignment, "--course", course_id)
t["submit_s"] = time.monotonic() - t0
print("PHASES " + json.dumps(t))
"""

GRADER_GRADE = r"""
import json, os, subprocess, time
from nbgrader.api import Gradebook
course = os.path.expanduser("~/course")
t = {}
for step in ("collect", "autograde"):
    t0 = time.monotonic()
    r = subprocess.run(["nbgrader", step, assignment], cwd=course, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    t[step + "_s"] = time.monotonic() - t0
scores = {}
with Gradebook(f"sqlite:///{course}/gradebook.db", course_id) as gb:
    for s in gb.assignment_submissions(assignment):
        scores[s.student_id] = [s.score, s.max_score]
print("GRADED " + json.dumps({"times": t, "scores": scores}))
"""


def stack_rss_mb(stack: HubStack) -> float:
    total = 0
    for p in stack.processes():
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return round(total / MIB, 1)


def hub_rss_mb(stack: HubStack) -> float:
    """The hub process alone (it answers every spawn, API call and proxy route)."""
    with contextlib.suppress(psutil.Error, AttributeError):
        return round(psutil.Process(stack.proc.pid).memory_info().rss / MIB, 1)
    return 0.0


def used_mb() -> float:
    return psutil.virtual_memory().used / MIB


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


def _line(out: str, key: str) -> Any:
    for line in out.splitlines():
        if line.startswith(key + " "):
            return json.loads(line.split(" ", 1)[1])
    raise RuntimeError(f"no {key} in the kernel's output:\n{out[-3000:]}")


def local_baselines(store: Path, students: int, workdir: Path) -> dict[str, Any]:
    """The notebook by nbclient on the local store, and nbgrader autograde in a plain folder."""
    import nbformat
    from nbclient import NotebookClient

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "VOXELHUB_"))}
    env |= {"VOXELHUB_STORE": str(store), "PATH": f"{VENV_BIN}:{env.get('PATH', '')}"}
    env["JUPYTER_CONFIG_PATH"] = str(workdir / "noconfig")
    course = workdir / "course"
    shutil.copytree(SOURCE.parent, course / "source" / ASSIGNMENT)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.course_id = 'bench'\nc.Execute.timeout = 600\n"
    )

    def nbgrader(*args: str) -> float:
        t0 = time.monotonic()
        r = subprocess.run(
            [str(VENV_BIN / "nbgrader"), *args], cwd=course, env=env, capture_output=True,
            text=True, check=False,
        )  # fmt: skip
        if r.returncode:
            raise RuntimeError(f"nbgrader {args[0]}: {r.stderr[-2000:]}")
        return time.monotonic() - t0

    nbgrader("generate_assignment", ASSIGNMENT, "--force")
    released = nbformat.read(course / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", 4)
    todo = iter(ANSWERS)
    for cell in released.cells:
        if "raise NotImplementedError()" in cell.source:
            cell.source = cell.source.replace("raise NotImplementedError()", next(todo))
    old = os.environ.get("VOXELHUB_STORE")
    os.environ["VOXELHUB_STORE"] = str(store)
    try:
        nb = nbformat.reads(nbformat.writes(released), as_version=4)
        t0 = time.monotonic()
        NotebookClient(nb, timeout=600, kernel_name="python3").execute()
        run_s = time.monotonic() - t0
    finally:
        if old is None:
            os.environ.pop("VOXELHUB_STORE", None)
        else:
            os.environ["VOXELHUB_STORE"] = old
    for i in range(students):
        folder = course / "submitted" / f"s{i:02d}" / ASSIGNMENT
        folder.mkdir(parents=True)
        nbformat.write(released, folder / f"{ASSIGNMENT}.ipynb")
        (folder / "timestamp.txt").write_text("2026-11-26 10:00:00.000000 UTC")
        nbgrader("db", "student", "add", f"s{i:02d}")
    return {
        "notebook_run_local_s": round(run_s, 2),
        "autograde_local_s": round(nbgrader("autograde", ASSIGNMENT), 2),
    }


def run(students: int, at_once: int) -> dict[str, Any]:
    from voxelhub import ingest
    from voxelhub.course import Hub, create_course, grader_account

    tag = secrets.token_hex(3)
    admin_name, prof, course, cohort = f"vhcadm{tag}", f"vhcprof{tag}", f"c{tag}", f"coh{tag}"
    names = [f"vhc{tag}s{i:02d}" for i in range(students)]
    grader = grader_account(course)
    data_account, exchange_account = f"vhcdata{tag}", f"vhcexch{tag}"
    state = Path(tempfile.mkdtemp(prefix="vhclassbench-"))
    os.chmod(state, 0o755)
    result: dict[str, Any] = {"students": students, "at_once": at_once}
    store = state / "store"
    report = ingest(PHANTOM, store, project=cohort, deidentify=True, progress=False)
    if report.failed:
        raise RuntimeError(report.summary())
    baseline_used = used_mb()
    stack = HubStack(
        state / "hub", store=store, admins=[admin_name], projects={cohort: []}, spawner="system",
        tls=True,
        extra_env={"VOXELHUB_DATA_USER": data_account, "VOXELHUB_EXCHANGE_USER": exchange_account},
    )  # fmt: skip
    try:
        result["hub_start_s"] = round(stack.start(timeout=240), 2)
        browser = HubBrowser(stack.url, stack.verify)
        password = secrets.token_urlsafe(18)
        browser.signup(admin_name, password)
        browser.login(admin_name, password, next_url="/hub/home")
        token = browser.new_token(note="classroom benchmark")
        hub = Hub(stack.url, token, cafile=str(stack.cafile))
        t0 = time.monotonic()
        create_course(
            hub, course, instructors=[prof], students=names, project=cohort,
            data_url=stack.data_url,
        )  # fmt: skip
        result["course_create_s"] = round(time.monotonic() - t0, 2)

        def spawn(name: str, timeout: float = 600) -> float:
            t0 = time.monotonic()
            hub.request("POST", f"/users/{name}/server", ok=(400,))
            while time.monotonic() - t0 < timeout:
                server = hub.request("GET", f"/users/{name}")["servers"].get("")
                if server and server["ready"]:
                    return time.monotonic() - t0
                time.sleep(0.5)
            raise TimeoutError(f"server of {name} not ready after {timeout:.0f} s")

        def kernel(user: str, code: str, **names_: Any) -> str:
            prelude = "".join(f"{k} = {v!r}\n" for k, v in names_.items())
            return run_code(
                stack.url, user, token, prelude + code, cafile=str(stack.cafile), timeout=1200
            )

        spawn(grader)
        out = kernel(
            grader, GRADER_RELEASE, source=SOURCE.read_text(), assignment=ASSIGNMENT,
            course_id=course,
        )  # fmt: skip
        assert "RELEASED" in out, out
        result["memory_before_class"] = {
            "hub_rss_mb": hub_rss_mb(stack),
            "stack_rss_mb": stack_rss_mb(stack),
        }

        def student(name: str) -> dict[str, float]:
            phases = {"spawn_s": spawn(name)}
            out = kernel(name, STUDENT, answers=ANSWERS, assignment=ASSIGNMENT, course_id=course)
            return phases | _line(out, "PHASES")

        peak = {"stack": 0.0, "hub": 0.0}
        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(at_once) as pool:
            futures = {pool.submit(student, n): n for n in names}
            while not all(f.done() for f in futures):
                peak["stack"] = max(peak["stack"], stack_rss_mb(stack))
                peak["hub"] = max(peak["hub"], hub_rss_mb(stack))
                time.sleep(2)
        class_wall = time.monotonic() - t0
        done, failed = {}, []
        for f, name in futures.items():
            try:
                done[name] = f.result()
            except Exception as exc:
                failed.append(f"{name}: {str(exc)[-500:]}")
        result["class"] = {
            "wall_s": round(class_wall, 1),
            "succeeded": len(done),
            "failed": failed,
            **{
                phase: summary([d[phase] for d in done.values()])
                for phase in ("spawn_s", "fetch_s", "run_s", "submit_s")
            },
            "hub_rss_peak_mb": round(peak["hub"], 1),
            "stack_rss_peak_mb": round(peak["stack"], 1),
            "stack_rss_after_mb": stack_rss_mb(stack),
            "system_used_mb": round(used_mb() - baseline_used),
            "servers_running": students,
        }
        print(f"class: {json.dumps(result['class'])}", flush=True)

        t0 = time.monotonic()
        graded = _line(
            kernel(grader, GRADER_GRADE, assignment=ASSIGNMENT, course_id=course), "GRADED"
        )
        wrong = {s: v for s, v in graded["scores"].items() if v[0] != v[1]}
        result["autograde"] = {
            "wall_s": round(time.monotonic() - t0, 1),
            **{k: round(v, 1) for k, v in graded["times"].items()},
            "graded": len(graded["scores"]),
            "not_full_marks": wrong,
            "missing": sorted(set(done) - set(graded["scores"])),
        }
        print(f"autograde: {json.dumps(result['autograde'])}", flush=True)
    finally:
        survivors = stack.stop()
        for p in psutil.process_iter(["pid", "username"]):
            accounts = {*names, admin_name, prof, grader, data_account, exchange_account}
            if p.info["username"] in accounts:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        for name in [admin_name, prof, grader, *names]:
            try:
                remove_account(name)
            except Exception as exc:  # report, keep cleaning
                print(f"could not remove {name}: {exc}", file=sys.stderr)
        remove_managed_group_if_unused()
        for account in (data_account, exchange_account):
            subprocess.run(["userdel", account], capture_output=True, check=False)
            subprocess.run(["groupdel", account], capture_output=True, check=False)
        for group in (cohort, f"{course}:students", f"{course}:instructors"):
            remove_group(group)
        result["survivors_after_stop"] = survivors
    try:
        result["baselines"] = local_baselines(store, students, state / "baseline")
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return result


def machine() -> dict[str, Any]:
    import jupyterhub
    import nbgrader

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        "versions": {
            "python": platform.python_version(),
            "jupyterhub": jupyterhub.__version__,
            "nbgrader": nbgrader.__version__,
        },
    }


def table(data: dict[str, Any]) -> str:
    r = data["results"]
    c, a, b = r["class"], r["autograde"], r["baselines"]
    n = r["students"]
    rows = [
        (
            f"class of {n} ({r['at_once']} at a time): spawn, fetch, run, submit",
            f"{c['wall_s']:.0f} s, {c['succeeded']}/{n} ok",
            "",
            "0 failures",
        ),
        ("… spawn (median / max)", f"{c['spawn_s']['median']:.1f} / {c['spawn_s']['max']:.1f} s",
         "", ""),
        ("… fetch through the exchange (median)", f"{c['fetch_s']['median']:.1f} s", "", ""),
        (
            "… run notebook 2 (median / max)",
            f"{c['run_s']['median']:.1f} / {c['run_s']['max']:.1f} s",
            f"one person, local store: {b['notebook_run_local_s']:.1f} s",
            "",
        ),
        ("… submit through the exchange (median)", f"{c['submit_s']['median']:.1f} s", "", ""),
        (
            f"autograde pass: collect + autograde {n}",
            f"{a['wall_s']:.0f} s ({a['graded']} graded, {len(a['not_full_marks'])} not 4/4)",
            f"nbgrader autograde, local folder: {b['autograde_local_s']:.0f} s",
            "",
        ),
        ("hub process RSS (peak)", f"{c['hub_rss_peak_mb']:.0f} MB", "", ""),
        (
            f"stack RSS (peak, {n} servers)",
            f"{c['stack_rss_peak_mb']:.0f} MB",
            "",
            "",
        ),
    ]  # fmt: skip
    out = ["| step | VoxelHub hub | baseline (same run) | target |", "|---|---|---|---|"]
    out += [f"| {x} | {y} | {z} | {t} |" for x, y, z, t in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=30, help="students in the class [30]")
    parser.add_argument("--at-once", type=int, default=10, help="students working at once [10]")
    parser.add_argument("--markdown", action="store_true", help="print the saved results' table")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file [{RESULTS}]")
    args = parser.parse_args(argv)
    if args.markdown:
        print(table(json.loads(args.output.read_text())))
        return 0
    if os.geteuid() != 0:
        parser.error("needs root: every hub user is a unix user (useradd, setuid)")
    started = dt.datetime.now(dt.UTC)
    results = run(args.students, args.at_once)
    data = {
        "benchmark": "classroom",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join(
            [".venv/bin/python", "benchmarks/classroom.py", *(argv or sys.argv[1:])]
        ),
        "machine": machine(),
        "targets": TARGETS,
        "notes": [
            "one machine, HTTPS on 127.0.0.1, a unix user per hub user, the data service and "
            "the nbgrader exchange service as in make hub-demo",
            "each student: spawn (POST until ready), then in a kernel of their server: nbgrader "
            "fetch_assignment, the right answers, nbclient runs the notebook in a second kernel "
            "reading the cohort through the data service, nbgrader submit",
            "autograde: nbgrader collect + autograde in the grader account's server",
            "baselines: the same notebook by nbclient on the local store (one person, no hub), "
            "and nbgrader autograde of as many submissions in a plain course folder",
            "other engineers' work shares this machine: see the load average",
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
