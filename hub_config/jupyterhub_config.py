"""VoxelHub's JupyterHub: one server, many users (``make hub-demo``, the end-to-end tests).

Run it as ``jupyterhub -f hub_config/jupyterhub_config.py`` from any folder.  Every deployment
choice is an explicit setting below; what differs between sites comes from environment variables
(all optional, defaults in brackets):

===============================  ==========================================================
``VOXELHUB_HUB_STATE``           folder for the hub database, cookie secret, proxy pid, logs
                                 and gateway cluster folders [``<repo>/.demo/hub``]; mode
                                 0711 (passable, not listable) and every file in it 0600
                                 (the hub runs with umask 077).
``VOXELHUB_HUB_IP``              public bind address [127.0.0.1]; ``0.0.0.0`` only with TLS.
``VOXELHUB_HUB_PORT``            public (proxy) port [8000].
``VOXELHUB_HUB_API_PORT``        hub's internal API port on 127.0.0.1 [8081].
``VOXELHUB_PROXY_API_PORT``      configurable-http-proxy's REST API port on 127.0.0.1 [8001].
``VOXELHUB_GATEWAY_PORT``        Dask Gateway HTTP + scheduler (TLS/SNI) proxy port [8010].
``VOXELHUB_GATEWAY_API_PORT``    Dask Gateway's private API port on 127.0.0.1 [8011].
``VOXELHUB_HUB_SSL_CERT``/``_KEY``  TLS certificate and key for the public port.  ``make
                                 hub-demo`` makes a self-signed pair on first run
                                 (``python -m voxelhub_hub.tls``); for a real site use a
                                 CA-issued pair (e.g. certbot's ``fullchain.pem`` /
                                 ``privkey.pem``).  Unset: plain HTTP (loopback only!).
``VOXELHUB_HUB_SPAWNER``         ``system`` [default]: each user's server runs as their own unix
                                 user (hub runs as root; accounts created on demand).
                                 ``simple``: LAPTOP WITHOUT ROOT ONLY, everyone runs as the
                                 hub's user, no isolation at all.
``VOXELHUB_HUB_ADMINS``          comma-separated hub admin user names [none].
``VOXELHUB_HUB_PROJECTS``        JSON file ``{"project": ["user", ...]}``: hub groups = projects.
``VOXELHUB_HUB_CULL_TIMEOUT``    seconds of inactivity before a user server is stopped [3600].
``VOXELHUB_CHP``                 configurable-http-proxy executable
                                 [``<repo>/.node/node_modules/.bin/configurable-http-proxy``,
                                 installed by ``make hub-deps``].
``VOXELHUB_HUB_SERVER_MEM``      ``Spawner.mem_limit`` [8G]: memory of everything one user runs
                                 (server, kernels, terminals, Dask workers, ``/dev/shm``)
                                 together, enforced by a per-user cgroup where the machine has
                                 cgroups (and by KubeSpawner on Kubernetes).
``VOXELHUB_HUB_SERVER_CPU``      ``Spawner.cpu_limit``, advertised as CPU_LIMIT [2] (same).
``VOXELHUB_HUB_PROCESS_MEM``     enforced: address space of each process of a user's server,
                                 kernels included (RLIMIT_AS) [8G]; ``0`` = none.
``VOXELHUB_HUB_MAX_PROCESSES``   enforced: processes + threads of a user (RLIMIT_NPROC, and the
                                 cgroup's pids.max) [1024].
``VOXELHUB_HUB_GROUP_LIMITS``    JSON ``{"group": {"mem_limit": "2G", "max_processes": 256,
                                 "process_memory_limit": "2G"}}``: other limits for members of
                                 a hub group (e.g. a course) [none].
``VOXELHUB_STORE``               store every kernel opens with ``voxelhub.open_catalog()``; as
                                 root its ``projects/<p>`` folders are made readable by project
                                 ``p``'s members only (unix group ``vhp-<p>``, mode 2750).
``VOXELHUB_DATA_PORT``           the data service's port on 127.0.0.1 [8020].
``VOXELHUB_DATA_USER``           system account of the data service, the only one that may
                                 read the store and the catalog [voxelhub-data].
``VOXELHUB_DATA_CATALOG_URL``    the data service's catalog (SQLAlchemy URL) [the SQLite file
                                 in a local store]; needed when ``VOXELHUB_STORE`` is object
                                 storage (``s3://bucket/store``).  A SQLite file's folder must
                                 hold nothing else: it becomes the account's (0700).
``VOXELHUB_DATA_STORAGE_OPTIONS_FILE``  JSON file of fsspec options for object storage
                                 (``endpoint_url``, ``key``, ``secret`` …), mode 0600, owned by
                                 root: handed to the service's account; readable by anyone else,
                                 the hub refuses to start.  Only its path reaches the service.
``VOXELHUB_DATA_PRESIGN_SECONDS``  on S3, answer chunk reads with presigned URLs valid this long
                                 (0-3600, advised ≤ 60) [0: every byte through the service].
``VOXELHUB_DATA_DICOMWEB_SERVERS``  DICOMweb roots curators may ``voxelhub pull`` from through
                                 the data service (space-separated) [none: no pulls].
``VOXELHUB_DATA_DICOMWEB_CREDENTIALS_FILE``  JSON ``{"<root>": {"user", "password"} | {"token"}}``
                                 for those servers, mode 0600: handed to the service's account
                                 like the storage options file; never sent by users.
``VOXELHUB_SITE``                this site's pseudonym (never a hospital's name) in the provenance
                                 of cohort packages curators export through the data service
                                 [unset: the curator's --site].
``VOXELHUB_KEY_FILE``            master key file of encrypted projects (0600, outside the store):
                                 handed to the data service's account, which alone decrypts;
                                 users' servers never get it [unset: no encrypted projects].
``VOXELHUB_DICOM_EDGE``          JSON file of the DICOM edge's settings (AE titles ->
                                 projects, allowed callers, ...; hub_config/dicom_edge_config.py)
                                 [unset: no edge].
``VOXELHUB_DATA_UPLOAD_MAX_BYTES``, ``…_MAX_UNPACKED_BYTES``, ``…_MAX_FILES``  caps on a
                                 curator's zip upload through the data service (compressed
                                 size, unpacked size, file count) [1 GiB, 4 GiB, 100000].
``VOXELHUB_CATALOG_URL``         catalog URL given to kernels [unset: a local store's SQLite
                                 catalog, which other users open read-only by themselves].
``VOXELHUB_BACKUP_REPO``         restic repository for the stack's scheduled backups of the
                                 store and this state folder [unset: none]; with
``VOXELHUB_BACKUP_PASSWORD_FILE``  its password file (root's, outside both folders), and
``VOXELHUB_BACKUP_INTERVAL``     seconds between backups [86400] (retention and the rest:
                                 extensions/voxelhub_hub/backup_schedule.py's traitlets).
===============================  ==========================================================

Authentication: NativeAuthenticator.  People sign up at ``/hub/signup``; an admin approves them at
``/hub/authorize``.  Admin accounts (``VOXELHUB_HUB_ADMINS``) are approved on sign-up, so sign the
admin up before the hub is reachable by anyone else.  There is no default password anywhere.
Sites with an identity provider replace the authenticator section, e.g.::

    # OpenID Connect (Keycloak, Azure AD, ...): pip install oauthenticator
    c.JupyterHub.authenticator_class = "generic-oauth"
    c.GenericOAuthenticator.client_id = "voxelhub"
    c.GenericOAuthenticator.client_secret = os.environ["OIDC_CLIENT_SECRET"]
    c.GenericOAuthenticator.oauth_callback_url = "https://hub.example.org/hub/oauth_callback"
    c.GenericOAuthenticator.authorize_url = "https://idp.example.org/realms/x/protocol/openid-connect/auth"
    c.GenericOAuthenticator.token_url = "https://idp.example.org/realms/x/protocol/openid-connect/token"
    c.GenericOAuthenticator.userdata_url = "https://idp.example.org/realms/x/protocol/openid-connect/userinfo"
    c.GenericOAuthenticator.username_claim = "preferred_username"
    c.GenericOAuthenticator.manage_groups = True          # groups (= projects) from the IdP
    c.GenericOAuthenticator.auth_state_groups_key = "oauth_user.groups"
    c.GenericOAuthenticator.allowed_groups = {"voxelhub"}

    # LDAP: pip install jupyterhub-ldapauthenticator
    c.JupyterHub.authenticator_class = "ldapauthenticator.LDAPAuthenticator"
    c.LDAPAuthenticator.server_address = "ldaps://ldap.example.org"
    c.LDAPAuthenticator.bind_dn_template = ["uid={username},ou=people,dc=example,dc=org"]
    c.LDAPAuthenticator.allowed_groups = ["cn=voxelhub,ou=groups,dc=example,dc=org"]
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import sys

import nativeauthenticator

c = get_config()  # type: ignore[name-defined]  # noqa: F821

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "extensions"))
CODE = REPO  # where users' processes import VoxelHub from (a published copy if REPO is private)

from voxelhub_hub.cluster_cleanup import make_cluster_cleanup  # noqa: E402
from voxelhub_hub.project_groups import make_pre_spawn_hook  # noqa: E402
from voxelhub_hub.system_users import USERNAME_RE, unreachable_folder  # noqa: E402

env = os.environ.get
VENV_BIN = os.path.dirname(sys.executable)  # the hub, user servers and gateway share one venv
STATE = os.path.abspath(env("VOXELHUB_HUB_STATE") or os.path.join(REPO, ".demo", "hub"))
# Every file the hub, its proxy and its services create is private from the start (the database
# with password hashes, logs, pid files); user servers inherit it, so users' new files are private
# too.  The state folder can be passed through (0711: users reach their own cluster folder and the
# data service its audit folder below it) but not listed; nothing in it is readable by others.
os.umask(0o077)
os.makedirs(STATE, exist_ok=True)
os.chmod(STATE, 0o711)
SESSIONS = os.path.join(STATE, "sessions")  # root's: each running user's limits, for the gateway

IP = env("VOXELHUB_HUB_IP", "127.0.0.1")
PORT = int(env("VOXELHUB_HUB_PORT", "8000"))
HUB_API_PORT = int(env("VOXELHUB_HUB_API_PORT", "8081"))
PROXY_API_PORT = int(env("VOXELHUB_PROXY_API_PORT", "8001"))
GATEWAY_PORT = int(env("VOXELHUB_GATEWAY_PORT", "8010"))
GATEWAY_API_PORT = int(env("VOXELHUB_GATEWAY_API_PORT", "8011"))
DATA_PORT = int(env("VOXELHUB_DATA_PORT", "8020"))
DATA_USER = env("VOXELHUB_DATA_USER", "voxelhub-data")
SSL_CERT, SSL_KEY = env("VOXELHUB_HUB_SSL_CERT"), env("VOXELHUB_HUB_SSL_KEY")
SPAWNER = env("VOXELHUB_HUB_SPAWNER", "system")
if SPAWNER not in ("system", "simple"):
    raise ValueError(f"VOXELHUB_HUB_SPAWNER must be 'system' or 'simple', not {SPAWNER!r}")
if IP not in ("127.0.0.1", "localhost", "::1") and not SSL_CERT:
    raise ValueError(f"refusing to serve plain HTTP on {IP}: set VOXELHUB_HUB_SSL_CERT/_KEY")

# ---- network ------------------------------------------------------------------------------------
# Browser -> configurable-http-proxy (public, TLS) -> hub / user servers / gateway, all on loopback.
c.JupyterHub.bind_url = f"{'https' if SSL_CERT else 'http'}://{IP}:{PORT}"
if SSL_CERT:
    c.JupyterHub.ssl_cert = SSL_CERT
    c.JupyterHub.ssl_key = SSL_KEY
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{HUB_API_PORT}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{PROXY_API_PORT}"
c.ConfigurableHTTPProxy.command = [
    env("VOXELHUB_CHP")
    or os.path.join(REPO, ".node", "node_modules", ".bin", "configurable-http-proxy")
]
c.ConfigurableHTTPProxy.should_start = True  # the hub starts the proxy and stops it on exit
c.JupyterHub.cleanup_servers = True  # stopping the hub stops every user server
c.JupyterHub.cleanup_proxy = True

# hub cookies (login, session, _xsrf) are not sent with cross-site requests, and only over TLS
# when the hub serves TLS (the user servers' cookies: HubOAuth in hub_config/jupyter/)
c.JupyterHub.tornado_settings = {
    "cookie_options": {"samesite": "Lax", **({"secure": True} if SSL_CERT else {})}
}

# ---- state (secrets are 0600; JupyterHub refuses a cookie secret file readable by others) ---------
c.JupyterHub.db_url = f"sqlite:///{os.path.join(STATE, 'jupyterhub.sqlite')}"
c.JupyterHub.cookie_secret_file = os.path.join(STATE, "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = os.path.join(STATE, "jupyterhub.pid")
c.ConfigurableHTTPProxy.pid_file = os.path.join(STATE, "jupyterhub-proxy.pid")
for _private in ("jupyterhub.sqlite", "jupyterhub_cookie_secret", "hub.log"):
    # created 0600 by the umask; files an older version left 0644 are closed here
    if os.path.exists(os.path.join(STATE, _private)):
        os.chmod(os.path.join(STATE, _private), 0o600)  # password hashes, secrets, users' output

# ---- authentication: sign-up + admin approval --------------------------------------------------
# NativeAuthenticator with its JupyterHub 6 login fix (see voxelhub_hub/native_auth.py)
c.JupyterHub.authenticator_class = "voxelhub_hub.native_auth.VoxelHubNativeAuthenticator"
# ours first: the authorization area with its actions as POST forms carrying the XSRF token
c.JupyterHub.template_paths = [
    os.path.join(REPO, "extensions", "voxelhub_hub", "templates"),
    os.path.join(os.path.dirname(nativeauthenticator.__file__), "templates"),
]
c.NativeAuthenticator.open_signup = False  # an admin approves every account
c.NativeAuthenticator.minimum_password_length = 10
c.NativeAuthenticator.check_common_password = True
# no lockout per account (anyone could lock the admin out); a client address that failed 5 times
# in 10 minutes waits instead (VoxelHubNativeAuthenticator.failed_logins_per_source/_window)
c.NativeAuthenticator.allowed_failed_logins = 0
c.Authenticator.admin_users = {
    u.strip() for u in env("VOXELHUB_HUB_ADMINS", "").split(",") if u.strip()
}
# NativeAuthenticator only authenticates approved users, so every authenticated user is allowed.
c.Authenticator.allow_all = True
# hub names become unix user names: lower-case POSIX names only
c.Authenticator.username_pattern = USERNAME_RE.pattern

# ---- spawner ------------------------------------------------------------------------------------
STORE = env("VOXELHUB_STORE", "")
if SPAWNER == "system":
    # Each server runs as the unix user of the same name; accounts are created on first spawn
    # (home 0700, group voxelhub-users) and existing accounts the hub did not create are refused.
    # Before every spawn the hook also sets the user's project groups (vhp-<project>) to their hub
    # groups.  The store is the data service's (below), not the project groups'.
    blocked = unreachable_folder(VENV_BIN)
    if blocked:
        raise SystemExit(
            f"the venv {VENV_BIN} is inside {blocked}, which other unix users cannot enter (its "
            f"mode lacks o+x), so user servers and the data service could not run its Python: "
            f"run `make install` again (for a checkout in a private folder it builds the venv "
            f"under /opt/voxelhub/), or clone VoxelHub where users can reach it (/opt, /srv)"
        )
    if unreachable_folder(REPO):
        # a private checkout (e.g. under /root): what users' processes import is published
        # where they can read it (voxelhub_hub/runtime.py), before any server starts
        from voxelhub_hub.runtime import publish

        CODE = str(publish(REPO, os.path.join(STATE, "runtime")))
    c.JupyterHub.spawner_class = "voxelhub_hub.spawner.VoxelHubSpawner"
    c.Spawner.pre_spawn_hook = make_pre_spawn_hook(None)
    # ~/examples: a link to the sample notebooks published read-only under the state folder
    from voxelhub_hub.examples import with_examples

    c.Spawner.pre_spawn_hook = with_examples(
        c.Spawner.pre_spawn_hook,
        os.path.join(REPO, "sample_notebooks"),
        os.path.join(STATE, "examples"),
    )
    c.Spawner.notebook_dir = "~"
    # Kernels talk to their server over unix sockets in the user's runtime folder (inside the
    # 0700 home), not TCP on 127.0.0.1, where any local user could subscribe to another user's
    # kernel output (ZeroMQ's PUB socket checks no key on subscribers).
    c.Spawner.args = ["--KernelManager.transport=ipc"]
else:
    # !!! LAPTOP WITHOUT ROOT ONLY: every user's server, kernel and Dask cluster runs as the hub's
    # own unix user, so any user can read every other user's files.  Never on a shared machine.
    c.JupyterHub.spawner_class = "voxelhub_hub.spawner.VoxelHubLaptopSpawner"
    c.SimpleLocalProcessSpawner.home_dir_template = os.path.join(STATE, "homes", "{username}")
    if os.geteuid() == 0:
        c.Spawner.args = ["--allow-root"]  # jupyter-server refuses root otherwise
c.Spawner.cmd = [os.path.join(VENV_BIN, "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120  # generous: 20 concurrent spawns on 2 cores take ~60 s
c.Spawner.http_timeout = 120
# mem_limit: enforced per user by a cgroup where the machine has cgroups (voxelhub_hub/cgroups.py),
# as KubeSpawner does with container limits; cpu_limit is advertised only (CPU_LIMIT).
c.Spawner.mem_limit = env("VOXELHUB_HUB_SERVER_MEM", "8G")
c.Spawner.cpu_limit = float(env("VOXELHUB_HUB_SERVER_CPU", "2"))
# Enforced on one machine (hard rlimits, inherited by kernels; see voxelhub_hub/spawner.py): a
# runaway kernel gets MemoryError rather than taking the machine down; fork bombs stop.
PROCESS_MEM = env("VOXELHUB_HUB_PROCESS_MEM", "8G")
c.ResourceLimits.process_memory_limit = None if PROCESS_MEM in ("", "0") else PROCESS_MEM
c.ResourceLimits.max_processes = int(env("VOXELHUB_HUB_MAX_PROCESSES", "1024"))
# Limits by hub group (a course gets less than a research project), JSON:
# {"course-x": {"mem_limit": "2G", "max_processes": 256}}
if env("VOXELHUB_HUB_GROUP_LIMITS"):
    c.ResourceLimits.group_limits = json.loads(env("VOXELHUB_HUB_GROUP_LIMITS", "{}"))
# One cgroup per user where the machine has them (voxelhub_hub/cgroups.py): mem_limit is then
# enforced for the server, kernels, terminals and Dask workers together, and stopping a server
# stops every process of that user.  Named after the state folder: hubs on one machine differ.
CGROUP_NAME = "voxelhub-" + hashlib.sha256(STATE.encode()).hexdigest()[:8]
c.UserSession.cgroup_name = CGROUP_NAME
c.UserSession.session_dir = SESSIONS
if SPAWNER == "system" and os.geteuid() == 0:
    from voxelhub_hub.spawner import remove_user_cgroups

    atexit.register(remove_user_cgroups, CGROUP_NAME)  # the hub's own cgroup folders, at exit

# ---- the data service: the one gate for every read of the store ----------------------------------
# With a store and real unix users, the store belongs to the service's own account (mode 0700):
# kernels and Dask workers read through the service with their hub token, which checks the
# project (hub group) and audits every access (extensions/voxelhub_data).  The laptop spawner
# keeps direct access (one unix user: nothing to protect from).
DATA_SERVICE = bool(STORE) and SPAWNER == "system"
DATA_PREFIX = "/services/voxelhub-data"
AUDIT_DIR = os.path.join(STATE, "audit")
if DATA_SERVICE:
    from voxelhub_hub.data_service import (
        ensure_service_account,
        hand_over_store,
        prepare_audit,
        store_environment,
    )

    ensure_service_account(DATA_USER)
    hand_over_store(STORE, DATA_USER)  # a folder; object storage (s3://…) has none to hand over
    # object storage: VOXELHUB_DATA_CATALOG_URL, VOXELHUB_DATA_STORAGE_OPTIONS_FILE (credentials,
    # made the account's 0600; only its path is passed on), VOXELHUB_DATA_PRESIGN_SECONDS
    DATA_STORE_ENV = store_environment(STORE, DATA_USER)
    # encrypted projects: the master key file is the service's alone (never the users')
    KEY_FILE = env("VOXELHUB_KEY_FILE", "")
    if KEY_FILE:
        from voxelhub_hub.data_service import hand_over_key_file

        hand_over_key_file(KEY_FILE, STORE, DATA_USER)
    AUDIT_LOG = str(prepare_audit(AUDIT_DIR, DATA_USER))
    # one folder of per-project de-identification secrets for every ingest the stack runs (the
    # service's uploads and pulls, the DICOM edge's arrivals): one patient, one pseudonym
    DEID_SECRETS = os.path.join(AUDIT_DIR, "secrets")
    AUDIT_CHECKPOINTS = os.path.join(STATE, "audit-checkpoints.jsonl")  # root's, 0600

    def _hand_over_then(hook):  # volumes ingested by root since: the service's
        def pre_spawn(spawner):
            hook(spawner)
            hand_over_store(STORE, DATA_USER)

        pre_spawn.__qualname__ = pre_spawn.__name__ = "voxelhub_pre_spawn_data"
        return pre_spawn

    c.Spawner.pre_spawn_hook = _hand_over_then(c.Spawner.pre_spawn_hook)

# What a kernel needs to find the store, the catalog and the gateway (voxelhub.open_catalog() and
# voxelhub.compute.client() with no arguments).  A local store's SQLite catalog needs no URL: users
# who may not write it open it read-only (voxelhub.catalog.default_catalog_url).
CATALOG_URL = env("VOXELHUB_CATALOG_URL", "")
GATEWAY_PREFIX = "/services/dask-gateway"
c.Spawner.environment = {
    "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
    # hub_config/jupyter/: JupyterLab neither fetches news nor checks for updates on the internet
    # (not from a server holding patient data) and does not ask every user about it
    "JUPYTER_CONFIG_PATH": os.path.join(CODE, "hub_config", "jupyter"),
    # the data service's URL on the hub (every read checked and audited), else the folder
    "VOXELHUB_STORE": f"http://127.0.0.1:{DATA_PORT}{DATA_PREFIX}" if DATA_SERVICE else STORE,
    # read by dask_gateway.Gateway(): REST API, scheduler traffic (TLS, SNI-routed, not through the
    # hub's proxy), the dashboard link shown in notebooks, and auth with the server's hub token
    "DASK_GATEWAY__ADDRESS": f"http://127.0.0.1:{GATEWAY_PORT}{GATEWAY_PREFIX}",
    "DASK_GATEWAY__PROXY_ADDRESS": f"gateway://127.0.0.1:{GATEWAY_PORT}",
    "DASK_GATEWAY__PUBLIC_ADDRESS": f"{GATEWAY_PREFIX}/",
    "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
}
if CODE != REPO:  # the published copy comes before the venv's editable path into the checkout
    c.Spawner.environment["PYTHONPATH"] = os.path.join(CODE, "workspace")
if CATALOG_URL:  # e.g. PostgreSQL; never a password here: use ~/.pgpass or the data service
    c.Spawner.environment["VOXELHUB_CATALOG_URL"] = CATALOG_URL
# The server's $JUPYTERHUB_API_TOKEN must be accepted by the gateway (a token only gets the scopes
# its user holds, so users outside every project still cannot use the gateway).
c.Spawner.server_token_scopes = [
    "users:activity!user",
    "access:servers!server",
    "read:users:name!user",
    "read:users:groups!user",
    "access:services!service=dask-gateway",
    "access:services!service=voxelhub-data",
]
# A user's Gateway clusters stop when their server stops (also when the idle culler stops it).
c.Spawner.post_stop_hook = make_cluster_cleanup(f"http://127.0.0.1:{GATEWAY_PORT}{GATEWAY_PREFIX}")

# ---- groups = projects; roles = what members may do ----------------------------------------------
PROJECTS: dict[str, list[str]] = {}
if env("VOXELHUB_HUB_PROJECTS"):
    with open(env("VOXELHUB_HUB_PROJECTS", "")) as f:
        PROJECTS = json.load(f)
c.JupyterHub.load_groups = {p: {"users": sorted(members)} for p, members in PROJECTS.items()}
c.JupyterHub.load_roles = [
    {
        # members of a project may start Dask clusters (admins add people to projects, i.e.
        # groups, in the admin panel or with POST /hub/api/groups/<project>/users)
        "name": "voxelhub-project-member",
        "scopes": ["access:services!service=dask-gateway"],
        "groups": sorted(PROJECTS),
    },
    {
        # every user may call the data service; what they may read is decided there, per project
        "name": "user",
        "scopes": ["self", "access:services!service=voxelhub-data"],
    },
    {
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    },
]
if DATA_SERVICE:
    c.JupyterHub.load_roles.append(
        {
            # the data service reads users' groups (= projects and roles) and admin flags
            "name": "voxelhub-data",
            "scopes": ["read:users", "read:groups"],
            "services": ["voxelhub-data"],
        }
    )

# ---- services -----------------------------------------------------------------------------------
CULL_TIMEOUT = int(env("VOXELHUB_HUB_CULL_TIMEOUT", "3600"))
c.JupyterHub.services = [
    {
        # stops user servers idle for CULL_TIMEOUT seconds (their clusters stop with them)
        "name": "idle-culler",
        "command": [
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            f"--timeout={CULL_TIMEOUT}",
            f"--cull-every={max(60, CULL_TIMEOUT // 6)}",
        ],
    },
    {
        # Dask Gateway, started and stopped by the hub; users authenticate with their hub tokens.
        # The hub's proxy routes /services/dask-gateway/ to it; dask comms use GATEWAY_PORT directly.
        "name": "dask-gateway",
        "url": f"http://127.0.0.1:{GATEWAY_PORT}",
        "command": [
            os.path.join(VENV_BIN, "dask-gateway-server"),
            "-f",
            os.path.join(HERE, "dask_gateway_config.py"),
        ],
        "environment": {
            "VOXELHUB_HUB_STATE": STATE,
            "VOXELHUB_HUB_SESSIONS": SESSIONS if SPAWNER == "system" else "",
            "VOXELHUB_HUB_SPAWNER": SPAWNER,
            "VOXELHUB_GATEWAY_PORT": str(GATEWAY_PORT),
            "VOXELHUB_GATEWAY_API_PORT": str(GATEWAY_API_PORT),
            # per-course caps on workers (hub_config/dask_gateway_config.py; issue 12)
            "VOXELHUB_GATEWAY_GROUP_LIMITS": env("VOXELHUB_GATEWAY_GROUP_LIMITS", ""),
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
            # passed on to schedulers and workers (they unpickle VoxelHub objects as the user)
            **({"PYTHONPATH": os.path.join(CODE, "workspace")} if CODE != REPO else {}),
        },
        "cwd": STATE,
        "display": False,
        "oauth_no_confirm": True,
    },
]
if DATA_SERVICE:
    c.JupyterHub.services += [
        {
            "name": "voxelhub-data",
            "url": f"http://127.0.0.1:{DATA_PORT}",
            "command": [sys.executable, "-m", "voxelhub_data"],
            "user": DATA_USER,  # the hub starts it as this account, not as root
            "environment": {
                "PYTHONPATH": os.pathsep.join(
                    [os.path.join(CODE, "extensions"), os.path.join(CODE, "workspace")]
                ),
                "VOXELHUB_DATA_STORE": STORE,
                **DATA_STORE_ENV,
                "VOXELHUB_AUDIT_LOG": AUDIT_LOG,
                "VOXELHUB_SECRETS_DIR": DEID_SECRETS,
                **({"VOXELHUB_KEY_FILE": KEY_FILE} if KEY_FILE else {}),
                # caps on curators' uploads (DataService.upload_max_*; issue 11)
                **{k: v for k, v in os.environ.items() if k.startswith("VOXELHUB_DATA_UPLOAD")},
                "PATH": f"{VENV_BIN}:/usr/bin:/bin",
            },
            "cwd": AUDIT_DIR,
            "display": False,
            "oauth_no_confirm": True,
        },
        {
            # root keeps the audit chain's head where the service account cannot rewrite it
            "name": "voxelhub-audit-checkpoint",
            "command": [
                sys.executable,
                "-m",
                "voxelhub_hub.data_service",
                AUDIT_LOG,
                AUDIT_CHECKPOINTS,
                "--every",
                env("VOXELHUB_AUDIT_CHECKPOINT_SECONDS", "60"),
            ],
            "environment": {"PYTHONPATH": os.path.join(REPO, "extensions")},
            "display": False,
        },
    ]

# ---- the DICOM edge: a PACS sends studies into projects (issue 11) -------------------------------
# Orthanc and its arrival worker in a private network namespace, as the data service's account
# (extensions/voxelhub_dicom; the settings and their help: hub_config/dicom_edge_config.py).  On
# when VOXELHUB_DICOM_EDGE names the site's JSON file of edge settings.
DICOM_EDGE = env("VOXELHUB_DICOM_EDGE", "")
if DATA_SERVICE and DICOM_EDGE:
    DICOM_STATE = os.path.join(STATE, "dicom")
    next(s for s in c.JupyterHub.services if s["name"] == "voxelhub-data")["environment"][
        "VOXELHUB_DICOM_ARRIVALS"
    ] = os.path.join(DICOM_STATE, "arrivals.sqlite")  # GET api/arrivals, for curators
    c.JupyterHub.services.append(
        {
            # as root (it makes the namespace and moves the interface in); Orthanc and the
            # worker run as DATA_USER, with a REST password only that account can read
            "name": "voxelhub-dicom",
            "command": [
                sys.executable,
                "-m",
                "voxelhub_dicom",
                "-f",
                os.path.join(HERE, "dicom_edge_config.py"),
            ],
            "environment": {
                "PYTHONPATH": os.pathsep.join(
                    [os.path.join(CODE, "extensions"), os.path.join(CODE, "workspace")]
                ),
                "VOXELHUB_DICOM_EDGE": DICOM_EDGE,
                "VOXELHUB_DICOM_STATE": DICOM_STATE,
                "VOXELHUB_DATA_STORE": STORE,
                "VOXELHUB_DATA_USER": DATA_USER,
                "VOXELHUB_AUDIT_LOG": AUDIT_LOG,
                "VOXELHUB_SECRETS_DIR": DEID_SECRETS,
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            },
            "display": False,
        }
    )

# ---- teaching: nbgrader's exchange as a hub service (issue 12) ------------------------------------
# Not a world-writable folder: a service under its own account keeps assignments, submissions and
# feedback (0700) and decides every request from the caller's hub token and course groups
# (voxelhub_hub/exchange_service.py); servers use it through nbgrader's Exchange API
# (hub_config/jupyter/nbgrader_config.py, voxelhub/nbgrader_exchange.py).  On when
# VOXELHUB_EXCHANGE_USER names the service's system account (created here; `make hub-demo`:
# voxelhub-exchange); the port is VOXELHUB_EXCHANGE_PORT [8030].
EXCHANGE_PORT = int(env("VOXELHUB_EXCHANGE_PORT", "8030"))
EXCHANGE_USER = env("VOXELHUB_EXCHANGE_USER", "")
if SPAWNER == "system" and EXCHANGE_USER:
    from voxelhub_hub.data_service import ensure_service_account, prepare_audit

    ensure_service_account(EXCHANGE_USER)
    EXCHANGE_DIR = str(prepare_audit(os.path.join(STATE, "exchange"), EXCHANGE_USER).parent)
    EXCHANGE_SCOPE = "access:services!service=voxelhub-exchange"
    c.Spawner.environment["VOXELHUB_EXCHANGE_URL"] = (
        f"http://127.0.0.1:{EXCHANGE_PORT}/services/voxelhub-exchange"
    )
    c.Spawner.server_token_scopes.append(EXCHANGE_SCOPE)
    if DATA_SERVICE:  # grading kernels (sandboxed, no server token) still read the cohort
        from voxelhub_hub.grading_token import with_grading_token

        c.Spawner.pre_spawn_hook = with_grading_token(c.Spawner.pre_spawn_hook)
    next(r for r in c.JupyterHub.load_roles if r["name"] == "user")["scopes"].append(EXCHANGE_SCOPE)
    c.JupyterHub.load_roles.append(
        {
            "name": "voxelhub-exchange",  # reads who is in which course group
            "scopes": ["read:users:name", "read:users:groups"],
            "services": ["voxelhub-exchange"],
        }
    )
    c.JupyterHub.services.append(
        {
            "name": "voxelhub-exchange",
            "url": f"http://127.0.0.1:{EXCHANGE_PORT}",
            "command": [sys.executable, "-m", "voxelhub_hub.exchange_service", EXCHANGE_DIR],
            "user": EXCHANGE_USER,
            "environment": {
                "PYTHONPATH": os.path.join(CODE, "extensions"),
                "PATH": f"{VENV_BIN}:/usr/bin:/bin",
            },
            "cwd": EXCHANGE_DIR,
            "display": False,
        }
    )

# ---- scheduled backups (issue 13) ----------------------------------------------------------------
# As root: it reads the data service's private store and this state folder.  Each outcome goes to
# the audit trail (admins: GET /services/voxelhub-data/api/audit?action=backup.run) and to
# <state>/backup-status.json; restic keeps earlier snapshots intact if a run is cut short.
BACKUP_REPO = env("VOXELHUB_BACKUP_REPO", "")
if BACKUP_REPO and STORE:
    backup_args = [
        f"--repository={BACKUP_REPO}",
        f"--password-file={env('VOXELHUB_BACKUP_PASSWORD_FILE', '')}",
        f"--store={STORE}",
        f"--hub-state={STATE}",
        f"--interval={env('VOXELHUB_BACKUP_INTERVAL', '86400')}",
    ]
    if DATA_SERVICE:
        backup_args.append(f"--audit-log={AUDIT_LOG}")
    if CATALOG_URL.startswith("postgresql"):
        backup_args.append(f"--catalog-url={CATALOG_URL}")  # pg_dump
    c.JupyterHub.services.append(
        {
            "name": "voxelhub-backup",
            "command": [sys.executable, "-m", "voxelhub_hub.backup_schedule", *backup_args],
            "environment": {
                "PYTHONPATH": os.pathsep.join(
                    [os.path.join(REPO, "extensions"), os.path.join(REPO, "workspace")]
                ),
                "PATH": "/usr/bin:/bin",  # restic, pg_dump from Debian
            },
            "cwd": STATE,
            "display": False,
        }
    )
