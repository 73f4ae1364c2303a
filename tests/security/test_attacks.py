"""The attack suite: an ordinary hub user attacks another one on the real stack, as real unix users.

One module-scoped hub (HTTPS proxy, the system spawner, Dask Gateway): ``victim`` is in project
``A``, ``attacker`` in project ``B`` (a course-like group with small limits).  Both have running
servers.  Each test is one kind of attack and fails if the attack gets anything: it runs either
as the attacker's unix user (``runuser``, what a JupyterLab terminal can do), in the attacker's
own kernel, or over HTTP with the attacker's hub token.  Request loops are bounded and stay on
loopback.  The data service's own attack suite (store, catalog, audit) is
``tests/hub/test_data_service.py``; admin CSRF and lockout are ``test_admin_csrf.py`` here.

Needs root (unix accounts, cgroups); about two minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "extensions"))

from voxelhub_hub import cgroups  # noqa: E402
from voxelhub_hub.client import HubBrowser, HubError, KernelSession  # noqa: E402
from voxelhub_hub.project_groups import ForeignGroup, ensure_group, remove_group  # noqa: E402
from voxelhub_hub.stack import HubStack  # noqa: E402
from voxelhub_hub.system_users import (  # noqa: E402
    UnsafeUsername,
    ensure_account,
    remove_account,
    remove_managed_group_if_unused,
    unreachable_folder,
)

import voxelhub  # noqa: E402
from tests.dicom_factory import write_series  # noqa: E402
from voxelhub.backup import Repository  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="unix accounts need root"),
]

S = secrets.token_hex(3)
ADMIN, VICTIM, ATTACKER = f"sadm{S}", f"svic{S}", f"satk{S}"
PROJECT_A, PROJECT_B = f"proja{S}", f"projb{S}"
SERVICE_ACCOUNT = f"vhsec{S}"
ATTACKER_MEMORY = 1 << 30  # the attacker's group limit: everything of theirs in 1 GiB
ATTACKER_PIDS = 250
SECRET = f"MRN-{secrets.token_hex(6)}"
#: the venv's Python by its real path (a private checkout's .venv links to where users reach it)
USER_PYTHON = str(Path(sys.executable).parent.resolve() / "python")


class Site:
    def __init__(self, stack: HubStack, state: Path, store: Path | None = None) -> None:
        self.stack, self.state, self.store = stack, state, store
        self.admin: HubBrowser | None = None
        self.tokens: dict[str, str] = {}

    def kernel(self, user: str) -> KernelSession:
        return KernelSession(self.stack.url, user, self.tokens[user], cafile=self.stack.cafile)

    def get(self, path: str, token: str | None = None, **kw: Any) -> requests.Response:
        headers = dict(kw.pop("headers", {}))
        if token:
            headers["Authorization"] = f"token {token}"
        return requests.get(
            self.stack.url + path,
            headers=headers,
            verify=self.stack.verify,
            timeout=30,
            allow_redirects=False,
            **kw,
        )

    def request(self, method: str, path: str, token: str, **kw: Any) -> requests.Response:
        return requests.request(
            method,
            self.stack.url + path,
            headers={"Authorization": f"token {token}"},
            verify=self.stack.verify,
            timeout=30,
            allow_redirects=False,
            **kw,
        )

    def start_server(self, user: str, timeout: float = 180) -> None:
        assert self.admin is not None
        self.admin.api("POST", f"/users/{user}/server", ok=(201, 202, 400))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.admin.api("GET", f"/users/{user}")["servers"].get("")
            if server and server["ready"]:
                return
            time.sleep(0.5)
        raise TimeoutError(f"server of {user} not ready; hub log: {self.stack.tail()}")

    def stop_server(self, user: str, timeout: float = 60) -> None:
        assert self.admin is not None
        self.admin.api("DELETE", f"/users/{user}/server", ok=(202, 204, 400))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "" not in self.admin.api("GET", f"/users/{user}")["servers"]:
                return
            time.sleep(0.5)
        raise TimeoutError(f"server of {user} still running")


def as_user(user: str, code: str, timeout: float = 90) -> Any:
    """Run Python ``code`` as unix user ``user`` (a terminal of theirs); return what it prints
    as JSON on its last line."""
    r = subprocess.run(
        ["runuser", "-u", user, "--", USER_PYTHON, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )
    assert r.returncode == 0, f"attack code failed as {user}: {r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def private_checkout() -> tuple[Path, Path]:
    """A checkout inside a mode-0700 folder (as one under /root): what ``make install`` leaves
    there is a ``.venv`` link to a venv users can reach, and the proxy in ``.node``."""
    outer = Path(tempfile.mkdtemp(prefix="vhprivate-"))  # 0700
    checkout = outer / "voxelhub"
    for part in ("hub_config", "extensions", "workspace", "sample_notebooks"):
        shutil.copytree(REPO / part, checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
    for link in (".venv", ".node"):
        (checkout / link).symlink_to((REPO / link).resolve())
    assert unreachable_folder(checkout) == str(outer)
    return outer, checkout


@pytest.fixture(scope="module", params=["checkout", "private-checkout"])
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    outer: Path | None = None
    config = REPO / "hub_config" / "jupyterhub_config.py"
    if request.param == "private-checkout":
        outer, checkout = private_checkout()
        config = checkout / "hub_config" / "jupyterhub_config.py"
    state = Path(tempfile.mkdtemp(prefix="vhsecstate-"))
    # the data service (a store of the victim's project) and the stack's scheduled backups run
    # too, so their files and endpoints are attacked in both checkouts
    data = Path(tempfile.mkdtemp(prefix="vhsecdata-"))
    os.chmod(data, 0o711)  # the service's account passes through to its store
    store = data / "store"
    write_series(data / "dicom", slices=4, rows=16, columns=16, seed=4, patient_id=SECRET)
    assert not voxelhub.ingest(data / "dicom", store, project=PROJECT_A, progress=False).failed
    shutil.rmtree(data / "dicom")
    backups = Path(tempfile.mkdtemp(prefix="vhsecbackup-"))  # root's, 0700
    (backups / "password").write_text(secrets.token_urlsafe(24) + "\n")
    Repository(str(backups / "repo"), backups / "password").init()
    limits = {PROJECT_B: {"mem_limit": ATTACKER_MEMORY, "max_processes": ATTACKER_PIDS}}
    stack = HubStack(
        state,
        store=store,
        admins=[ADMIN],
        projects={PROJECT_A: [VICTIM], PROJECT_B: [ATTACKER]},
        spawner="system",
        tls=True,
        extra_env={
            "VOXELHUB_DATA_USER": SERVICE_ACCOUNT,
            "VOXELHUB_HUB_GROUP_LIMITS": json.dumps(limits),
            "VOXELHUB_BACKUP_REPO": str(backups / "repo"),
            "VOXELHUB_BACKUP_PASSWORD_FILE": str(backups / "password"),
        },
        config=config,
    )
    try:
        stack.start(timeout=180)
        site = Site(stack, state, store)
        admin = HubBrowser(stack.url, stack.verify)
        password = secrets.token_urlsafe(18)
        admin.signup(ADMIN, password)
        admin.login(ADMIN, password, next_url="/hub/home")
        site.admin = admin
        for name in (ADMIN, VICTIM, ATTACKER):
            body = {"note": "security suite", "expires_in": 3600}
            site.tokens[name] = admin.api("POST", f"/users/{name}/tokens", json=body)["token"]
        for name in (VICTIM, ATTACKER):
            site.start_server(name)
        yield site
    finally:
        survivors = stack.stop()
        # the hub removed its user cgroups at exit (nothing left below its own cgroup)
        tree = cgroups.detect(_cgroup_name_of(state))
        left = [str(base) for base in tree.bases if base.exists()] if tree is not None else []
        for name in (ADMIN, VICTIM, ATTACKER):
            remove_account(name)
        remove_managed_group_if_unused()
        subprocess.run(["userdel", SERVICE_ACCOUNT], capture_output=True, check=False)
        subprocess.run(["groupdel", SERVICE_ACCOUNT], capture_output=True, check=False)
        for project in (PROJECT_A, PROJECT_B):
            remove_group(project)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(backups, ignore_errors=True)
        if outer is not None:
            shutil.rmtree(outer, ignore_errors=True)
    assert not survivors, f"processes outlived the hub: {survivors}"
    assert not left, f"cgroups left behind: {left}"


# ---- 1. kernels: nothing of one user's session reaches another -----------------------------------

LISTEN_AND_SUBSCRIBE = """
import json, pwd, zmq
victim = pwd.getpwnam({victim!r}).pw_uid
ports = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and int(f[7]) == victim:  # LISTEN sockets of the victim's uid
            ports.add(int(f[1].rsplit(":", 1)[1], 16))
ctx = zmq.Context()
heard = []
for port in sorted(ports):
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"tcp://127.0.0.1:{{port}}")
    if s.poll(1500):
        heard.append([port, repr(s.recv_multipart()[:3])[:200]])
    s.close()
try:
    import os
    os.listdir({runtime!r})
    runtime = "listed"
except PermissionError:
    runtime = "denied"
print(json.dumps({{"ports": sorted(ports), "heard": heard, "runtime": runtime}}))
"""


def test_another_users_kernel_output_cannot_be_heard(site: Site) -> None:
    home = pwd.getpwnam(VICTIM).pw_dir
    runtime = f"{home}/.local/share/jupyter/runtime"
    with site.kernel(VICTIM) as kernel:
        kernel.execute(
            "import threading, time\n"
            "def talk():\n"
            "    for _ in range(600):\n"
            f"        print({SECRET!r}, flush=True); time.sleep(0.05)\n"
            "threading.Thread(target=talk, daemon=True).start()"
        )
        connections = [json.loads(p.read_text()) for p in Path(runtime).glob("kernel-*.json")]
        assert connections and {c["transport"] for c in connections} == {"ipc"}, connections
        result = as_user(ATTACKER, LISTEN_AND_SUBSCRIBE.format(victim=VICTIM, runtime=runtime))
        owners = _listeners(set(result["ports"]))
        said = kernel.execute("import voxelhub; print('FILE', voxelhub.__file__)")
        where = next(line[5:] for line in said.splitlines() if line.startswith("FILE "))
    assert result["heard"] == [], result
    assert result["runtime"] == "denied"
    # over TCP the victim keeps the server (token-protected: see test_tokens_servers_...) and
    # the kernel's IOPub pipe inlet (ipykernel binds a ZeroMQ PULL socket on 127.0.0.1 for
    # forked children's output: write-only, messages need a 16-byte random key), not the five
    # channels a TCP kernel listens on
    kernel_ports = [port for port, cmd in owners.items() if "ipykernel" in cmd]
    server_ports = [port for port, cmd in owners.items() if "jupyterhub-singleuser" in cmd]
    assert len(kernel_ports) <= 1 and len(server_ports) == 1, owners
    assert set(owners) == set(result["ports"]), owners
    # from a private checkout, users' processes import the copy the hub published for them
    private = not site.stack.config.is_relative_to(REPO)
    expected = site.state / "runtime" / "workspace" if private else REPO / "workspace"
    assert where.startswith(str(expected)), where


def _listeners(ports: set[int]) -> dict[int, str]:
    """``{port: command line}`` of the processes listening on ``ports`` (as root)."""
    inodes = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            port = int(f[1].rsplit(":", 1)[1], 16)
            if f[3] == "0A" and port in ports:
                inodes[f"socket:[{f[9]}]"] = port
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                port = inodes.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
                if port is not None:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    found[port] = cmd.decode(errors="replace")[:200]
        except OSError:
            continue
    return found


# ---- 3, 4. hub state and logs ------------------------------------------------------------------


def test_the_hubs_files_are_private_from_the_start(site: Site) -> None:
    # the victim's server output (here: a kernel writing to its stderr) stays out of the hub log
    with site.kernel(VICTIM) as kernel:
        kernel.execute(f"import os; os.write(2, b'patient {SECRET}\\n')")
    time.sleep(1)
    assert SECRET not in (site.state / "hub.log").read_text(errors="replace")
    own_log = Path(pwd.getpwnam(VICTIM).pw_dir) / ".local/state/voxelhub/server.log"
    assert SECRET in own_log.read_text(errors="replace")
    assert own_log.stat().st_mode & 0o077 == 0
    assert own_log.stat().st_uid == pwd.getpwnam(VICTIM).pw_uid

    deadline = time.monotonic() + 120  # the stack's first scheduled backup runs at start
    while not (site.state / "backup-status.json").exists():
        assert time.monotonic() < deadline, site.stack.tail()
        time.sleep(0.5)

    exposed = []
    # published for every user on purpose: a private checkout's code, and the sample notebooks
    runtime, examples = site.state / "runtime", site.state / "examples"
    if runtime.exists():
        assert sorted(p.name for p in runtime.iterdir()) == [
            "extensions",
            "hub_config",
            "workspace",
        ]
    if examples.exists():
        shipped = {p.name for p in (REPO / "sample_notebooks").glob("*.ipynb")}
        assert {p.name for p in examples.glob("*.ipynb")} == shipped
        assert all(p.suffix == ".ipynb" or p.name == ".source-sha256" for p in examples.iterdir())
    for folder, dirs, files in os.walk(site.state):
        if Path(folder) == site.state:
            dirs[:] = [d for d in dirs if d not in ("runtime", "examples")]
        for name in files:
            path = Path(folder) / name
            if path.name.endswith(".crt") or path.name == "cert.pem":
                continue  # the public certificate
            if path.lstat().st_mode & 0o044:
                exposed.append(f"{oct(path.lstat().st_mode & 0o777)} {path}")
        for name in dirs:
            path = Path(folder) / name
            if path.lstat().st_mode & 0o004:
                exposed.append(f"{oct(path.lstat().st_mode & 0o777)} {path}/")
    assert exposed == [], "readable by other users:\n" + "\n".join(exposed)
    # the database (password hashes) was created private on this first run
    assert (site.state / "jupyterhub.sqlite").stat().st_mode & 0o077 == 0

    targets = [
        str(site.state),
        str(site.state / "hub.log"),
        str(site.state / "jupyterhub.sqlite"),
        str(site.state / "jupyterhub_cookie_secret"),
        str(site.state / "sessions"),
        str(site.state / "backup-status.json"),
        str(site.state / "audit"),
        str(site.state / "audit" / "audit.log"),
        str(site.state / "audit" / "secrets"),
        str(site.store),
        str(site.store / "catalog.sqlite"),
        str(own_log),
        pwd.getpwnam(VICTIM).pw_dir,
    ]
    code = (
        "import json, os\nout = {}\n"
        f"for p in {targets!r}:\n"
        "    try:\n"
        "        os.listdir(p) if os.path.isdir(p) else open(p, 'rb').read(1)\n"
        "        out[p] = 'read'\n"
        "    except PermissionError:\n"
        "        out[p] = 'denied'\n"
        "    except FileNotFoundError:\n"
        "        out[p] = 'missing'\n"
        "print(json.dumps(out))"
    )
    result = as_user(ATTACKER, code)
    assert set(result.values()) == {"denied"}, result


def test_the_data_services_curator_doors_refuse_others(site: Site) -> None:
    """Uploads, STOW-RS, pulls, cohorts, deletes, settings, arrivals and the audit trail (with the
    stack's backup outcomes) of the victim's project: the attacker, and the victim who is only a
    viewer there, are refused; an admin reads the backup outcome."""
    data = "/services/voxelhub-data/api/"
    admin = site.tokens[ADMIN]
    uid = site.get(data + "series", admin).json()["rows"][0]["volume_uid"]
    doors = [
        ("POST", f"projects/{PROJECT_A}/uploads", {"data": b"PK\x05\x06" + bytes(18)}),
        ("POST", f"projects/{PROJECT_A}/studies", {"data": b"--x--"}),
        ("POST", f"projects/{PROJECT_A}/pulls", {"json": {"url": "http://127.0.0.1:1/"}}),
        ("POST", f"projects/{PROJECT_A}/pull-queries", {"json": {"url": "http://127.0.0.1:1/"}}),
        ("POST", f"projects/{PROJECT_A}/cohorts", {"data": b"not a tar"}),
        ("POST", f"projects/{PROJECT_A}/cohort-exports", {"json": {}}),
        ("PUT", f"projects/{PROJECT_A}/settings", {"json": {"deidentify": True}}),
        ("DELETE", f"volumes/{uid}", {}),
        ("GET", f"arrivals?project={PROJECT_A}", {}),
        ("GET", "audit?action=backup.run", {}),
    ]
    answers = {
        (who, method, path): site.request(method, data + path, site.tokens[who], **kw).status_code
        for who in (ATTACKER, VICTIM)
        for method, path, kw in doors
    }
    assert set(answers.values()) == {403}, answers
    assert site.get(data + f"volumes/{uid}", admin).status_code == 200  # nothing was deleted
    deadline = time.monotonic() + 120
    while not (records := site.get(data + "audit?action=backup.run", admin).json()["records"]):
        assert time.monotonic() < deadline, "no backup outcome in the audit trail"
        time.sleep(1)
    assert records[0]["reason"] == "completed", records[0]


# ---- 5. user names cannot capture project groups -------------------------------------------------


def test_a_username_cannot_capture_a_future_project(site: Site) -> None:
    future = f"fut{S}"
    squatter = HubBrowser(site.stack.url, site.stack.verify)
    with pytest.raises(HubError):
        squatter.signup(f"vhp-{future}", secrets.token_urlsafe(18))
    with pytest.raises(UnsafeUsername, match="reserved"):
        ensure_account(f"vhp-{future}")
    with pytest.raises(UnsafeUsername, match="reserved"):
        ensure_account(SERVICE_ACCOUNT.replace("vhsec", "voxelhub-"))
    # hub accounts get no personal group that a project could later adopt
    for user in (VICTIM, ATTACKER):
        assert subprocess.run(["getent", "group", user], capture_output=True).returncode == 2
    # a group of that name made outside the hub (a personal group) is never adopted
    subprocess.run(["useradd", "--user-group", f"vhp-{future}"], check=True, capture_output=True)
    try:
        with pytest.raises(ForeignGroup, match=f"vhp-{future}"):
            ensure_group(future)
        # and a member's spawn says why instead of a bare error 500
        assert site.admin is not None
        site.admin.api("POST", "/groups/" + future, ok=(201, 409))
        site.admin.api("POST", f"/groups/{future}/users", json={"users": [ADMIN]})
        r = site.request("POST", f"/hub/api/users/{ADMIN}/server", site.tokens[ADMIN])
        message = r.text
        if r.status_code in (201, 202):  # the failure comes while it starts
            for _ in range(60):
                status = site.get(f"/hub/api/users/{ADMIN}/server/progress", site.tokens[ADMIN])
                message = status.text
                if "failed" in message.lower() or "cannot start" in message:
                    break
                time.sleep(1)
        assert "was not created by the hub" in message, (r.status_code, message[:500])
    finally:
        subprocess.run(["userdel", f"vhp-{future}"], capture_output=True, check=False)
        subprocess.run(["groupdel", f"vhp-{future}"], capture_output=True, check=False)
        if site.admin is not None:
            site.admin.api("DELETE", f"/groups/{future}", ok=(200, 204, 404))


# ---- 6. one user cannot exhaust the machine ------------------------------------------------------

EXHAUST = """
import json, os, subprocess, sys
out = {"cgroup": open("/proc/self/cgroup").read()}
# three processes of 450 MiB each (pages touched), against a 1 GiB budget for everything
hog = "import os; open('/proc/self/oom_score_adj','w').write('1000'); b = bytearray(450 * 2**20); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep(3)"
procs = [subprocess.Popen([sys.executable, "-c", hog]) for _ in range(3)]
out["hogs"] = [p.wait() for p in procs]
# /dev/shm is memory too
shm = "/dev/shm/" + os.environ["JUPYTERHUB_USER"] + "-attack"
fill = f"import os; open('/proc/self/oom_score_adj','w').write('1000')\\nwith open({shm!r}, 'wb') as f:\\n    for _ in range(150): f.write(b'x' * 2**23); f.flush()"
out["shm"] = subprocess.run([sys.executable, "-c", fill], capture_output=True).returncode
out["shm_left"] = os.path.getsize(shm) if os.path.exists(shm) else 0
if os.path.exists(shm):
    os.remove(shm)
# a fork bomb, bounded: how many of 400 sleeping children start
started, kids = 0, []
for _ in range(400):
    try:
        kids.append(subprocess.Popen(["sleep", "30"]))
        started += 1
    except OSError:
        break
for k in kids:
    k.kill(); k.wait()
out["forks"] = started
print(json.dumps(out))
"""


def test_one_user_cannot_exhaust_the_machine(site: Site) -> None:
    with site.kernel(ATTACKER) as kernel:
        result = json.loads(kernel.execute(EXHAUST, timeout=240).strip().splitlines()[-1])
    assert result["forks"] < ATTACKER_PIDS, result  # the fork bomb stops at the user's budget
    tree = cgroups.detect(_cgroup_name(site))
    if tree is None:
        pytest.skip("no usable cgroups on this machine: memory is bounded per process only")
    assert f"/{_cgroup_name(site)}/{ATTACKER}" in result["cgroup"], result["cgroup"]
    assert -9 in result["hogs"], f"1.35 GiB of processes ran in a 1 GiB budget: {result}"
    assert result["shm"] == -9 and result["shm_left"] <= ATTACKER_MEMORY, result


def _cgroup_name(site: Site) -> str:
    return _cgroup_name_of(site.state)


def _cgroup_name_of(state: Path) -> str:
    """The hub's cgroup folder name (hub_config/jupyterhub_config.py: from the state folder)."""
    return "voxelhub-" + hashlib.sha256(str(state).encode()).hexdigest()[:8]


# ---- 6, 7. Gateway workers: in the user's budget, no dashboards, not another user's --------------


ATTACKER_CLUSTER = """
import json, sys
from dask_gateway import Gateway
from dask_gateway.auth import JupyterHubAuth
gateway = Gateway(address=sys.argv[1], proxy_address=sys.argv[2], auth=JupyterHubAuth(api_token=sys.argv[3]))
cluster = gateway.new_cluster()
cluster.scale(1)
client = cluster.get_client()
client.wait_for_workers(1, timeout=120)
print(json.dumps({"name": cluster.name}), flush=True)
sys.stdin.readline()  # until the test has looked
client.close()
cluster.shutdown()
gateway.close()
"""


def test_gateway_workers_share_the_budget_and_expose_no_dashboard(site: Site) -> None:
    gw_port = site.stack.ports["VOXELHUB_GATEWAY_PORT"]
    address = f"http://127.0.0.1:{gw_port}/services/dask-gateway"
    api = f"{address}/api/v1/clusters/"

    def clusters(user: str) -> dict[str, Any]:
        headers = {"Authorization": f"jupyterhub {site.tokens[user]}"}
        listing: dict[str, Any] = requests.get(api, headers=headers, timeout=30).json()
        return listing

    # the attacker's cluster, made from their own terminal (a separate process: dask_gateway's
    # client leaves this interpreter's recursion counter off, which breaks a later ast.parse)
    proc = subprocess.Popen(
        [
            *("runuser", "-u", ATTACKER, "--", USER_PYTHON, "-c", ATTACKER_CLUSTER),
            *(address, f"gateway://127.0.0.1:{gw_port}", site.tokens[ATTACKER]),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line, f"no cluster: {proc.stderr.read() if proc.stderr else ''}"
        name = json.loads(line)["name"]
        # the victim neither sees nor stops the attacker's cluster
        assert clusters(VICTIM) == {}
        r = requests.delete(
            api + name,
            headers={"Authorization": f"jupyterhub {site.tokens[VICTIM]}"},
            timeout=30,
        )
        assert r.status_code in (403, 404), r.status_code
        assert list(clusters(ATTACKER)) == [name]
        # no dashboard behind the public port, for anyone
        dash = site.get(f"/services/dask-gateway/clusters/{name}/status")
        assert dash.status_code == 404, dash.status_code
        owned = cgroups.processes_of_uid(pwd.getpwnam(ATTACKER).pw_uid)
        dask = [p for p in owned if b"dask" in Path(f"/proc/{p}/cmdline").read_bytes()]
        dask = [p for p in dask if b"JupyterHubAuth" not in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(dask) >= 2, "scheduler and worker processes"
        for pid in dask:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"--no-dashboard" in cmdline and b"--dashboard-address" not in cmdline
            limits = Path(f"/proc/{pid}/limits").read_text()
            assert f"Max processes             {ATTACKER_PIDS}" in limits, limits
            if cgroups.detect(_cgroup_name(site)) is not None:
                own = Path(f"/proc/{pid}/cgroup").read_text()
                assert f"/{_cgroup_name(site)}/{ATTACKER}" in own, own
        proc.stdin.write("done\n")
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- the ones that held: tokens, other users' servers, the hub API, traversal --------------------


def test_tokens_servers_and_the_hub_api_hold(site: Site) -> None:
    mine, theirs = site.tokens[ATTACKER], site.tokens[VICTIM]
    assert site.get("/hub/api/user", mine).json()["name"] == ATTACKER
    for token in ("", "nonsense", "0" * 32, mine[:-1] + ("a" if mine[-1] != "a" else "b")):
        r = site.get("/hub/api/user", token or None)
        assert r.status_code == 403, (token, r.status_code)
    assert site.admin is not None
    short = site.admin.api(
        "POST", f"/users/{ATTACKER}/tokens", json={"note": "expiring", "expires_in": 1}
    )["token"]
    time.sleep(2.5)
    assert site.get("/hub/api/user", short).status_code == 403
    # the hub API: only oneself
    for method, path in [
        ("GET", "/hub/api/users"),
        ("GET", f"/hub/api/users/{VICTIM}"),
        ("POST", f"/hub/api/users/{VICTIM}/tokens"),
        ("DELETE", f"/hub/api/users/{VICTIM}/server"),
        ("POST", f"/hub/api/groups/{PROJECT_A}/users"),
        ("GET", "/hub/api/proxy"),
    ]:
        r = site.request(method, path, mine, json={"users": [ATTACKER]})
        assert r.status_code in (403, 404), (method, path, r.status_code)
    # the victim's server, with the attacker's token and with none, by every spelling
    for path in [
        f"/user/{VICTIM}/api/contents",
        f"/user/{VICTIM}/api/kernels",
        f"/user/{ATTACKER}/../{VICTIM}/api/contents",
        f"/user/{ATTACKER}/%2e%2e/{VICTIM}/api/contents",
        f"/user/{VICTIM.upper()}/api/contents",
    ]:
        for token in (mine, None):
            r = site.get(path, token)
            assert r.status_code in (302, 400, 403, 404), (path, token is None, r.status_code)
            assert SECRET not in r.text
    # the attacker's own server cannot be talked into the victim's files
    for path in [
        f"/user/{ATTACKER}/api/contents/..%2f{VICTIM}",
        f"/user/{ATTACKER}/api/contents/%2e%2e/%2e%2e/home/{VICTIM}",
        f"/user/{ATTACKER}/files/..%2f..%2fhome%2f{VICTIM}%2f.bash_history",
    ]:
        r = site.get(path, mine)
        assert r.status_code in (400, 403, 404), (path, r.status_code)
    assert site.get(f"/user/{VICTIM}/api/contents", theirs).status_code == 200


# ---- 8. nothing of a user outlives their server ---------------------------------------------------


def test_stopping_a_server_stops_every_process_of_the_user(site: Site) -> None:
    uid = pwd.getpwnam(ATTACKER).pw_uid
    with site.kernel(ATTACKER) as kernel:
        kernel.execute(
            "import subprocess\n"
            "subprocess.Popen(['setsid', 'nohup', 'sleep', '100000'], start_new_session=True,"
            " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "subprocess.Popen(['sh', '-c', '(sleep 100000 &) ; exit 0'], start_new_session=True)"
        )
    time.sleep(1)
    sleepers = [
        p
        for p in cgroups.processes_of_uid(uid)
        if b"sleep" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert len(sleepers) >= 2, "the detached jobs started"
    site.stop_server(ATTACKER)
    deadline = time.monotonic() + 30
    while cgroups.processes_of_uid(uid) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = cgroups.processes_of_uid(uid)
    assert not left, [Path(f"/proc/{p}/cmdline").read_bytes() for p in left]
    tree = cgroups.detect(_cgroup_name(site))
    if tree is not None:
        assert all(not (base / ATTACKER).exists() for base in tree.bases)
    # and with no server, no Dask cluster either (its budget is the server's)
    gw_port = site.stack.ports["VOXELHUB_GATEWAY_PORT"]
    r = requests.post(
        f"http://127.0.0.1:{gw_port}/services/dask-gateway/api/v1/clusters/",
        headers={"Authorization": f"jupyterhub {site.tokens[ATTACKER]}"},
        json={"cluster_options": {}},
        timeout=30,
    )
    assert r.status_code >= 400 and "no running JupyterLab server" in r.text, (
        r.status_code,
        r.text,
    )
    site.start_server(ATTACKER)  # for any test after this one


# ---- 10. /proc --------------------------------------------------------------------------------


def test_other_users_processes_are_hidden_where_proc_allows_it(site: Site) -> None:
    options = next(
        line.split()[3]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1] == "/proc"
    )
    if "hidepid=2" not in options and "hidepid=invisible" not in options:
        pytest.skip(f"/proc is mounted {options} here (no hidepid): see README, Security model")
    victim = pwd.getpwnam(VICTIM).pw_uid
    seen = as_user(
        ATTACKER,
        "import json, os\n"
        f"print(json.dumps([p for p in os.listdir('/proc') if p.isdigit() and os.stat('/proc/'+p).st_uid == {victim}]))",
    )
    assert seen == []
