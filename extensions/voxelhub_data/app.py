"""The data service: the one gate for every read of the store on a multi-user hub.

Kernels are user code, so access control inside them is no control.  This service runs as its
own system account — the only one that can open the store and the catalog — and answers, for
each request authenticated by JupyterHub (an API token from a kernel or a Dask worker, or the
OAuth cookie of a browser):

===============================================  ============================================
``GET  api/``                                    who you are, your projects and roles
``GET  api/projects``                            your projects
``GET  api/series``, ``api/studies``             catalog queries, filtered to your projects,
                                                 paged (``limit``, ``after``), JSON or Parquet
``GET  api/volumes/<uid>``                       a volume's metadata (StoredVolume as JSON)
``DELETE api/volumes/<uid>``                     remove a volume, its labels and feature rows
                                                 from the catalog and the store (curators)
``GET|PUT api/projects/<name>/settings``         de-identification of a project: read
                                                 (members), set ``{"deidentify": bool}``
                                                 while it holds no volumes (curators)
``GET|HEAD api/store/<store path>/<key>``        Zarr keys, with HTTP ``Range`` (inner chunks
                                                 of sharded arrays); on S3 with
                                                 ``presign_seconds``: 307 to a presigned URL
``PUT  api/volumes/<uid>/labels/<name>``         write a label image (analysts, curators)
``GET  api/volumes/<uid>/thumbnail``             a small PNG slice (``z``, ``axis``)
``PUT|POST api/features``                        store cohort feature rows, a Parquet body
                                                 (analysts, curators of every volume's project)
``GET  api/features``                            stored feature rows of your projects
                                                 (``settings_hash``, ``series``), Parquet/JSON
``GET  api/features/settings/<hash>``            the settings a stored hash stands for
``GET  api/audit``                               the audit trail (hub admins only)
``GET  api/arrivals?project=P``                  studies the DICOM edge received for ``P``
                                                 and their state (curators of ``P``; hub
                                                 admins may leave ``project`` out)
``POST api/projects/<name>/uploads``             a zip of DICOM files to ingest (curators):
                                                 202 with the upload's id
``GET  api/uploads/<id>``                        an upload's state, progress and report
                                                 (the uploader, curators of its project)
``POST api/projects/<name>/studies``             STOW-RS (multipart/related DICOM) into a
                                                 project (curators), checked like an upload
``POST api/projects/<name>/pulls``               pull studies from an allowed DICOMweb server
                                                 (curators): 202 with the pull's id
``GET  api/pulls/<id>``                          a pull's state, progress and report (the
                                                 requester, curators of its project)
``POST api/projects/<name>/pull-queries``        the studies a pull's query selects on an
                                                 allowed server (QIDO-RS; curators)
``POST api/projects/<name>/cohorts``             import a cohort package, sent as a tar
                                                 (curators): verified, then imported
``POST api/projects/<name>/cohort-exports``      export a de-identified selection as a
                                                 cohort package, answered as a tar (curators)
``GET  api/health``                              liveness, no authentication
===============================================  ============================================

Every decision, allowed or denied, goes to the hash-chained audit trail
(:mod:`voxelhub.audit`); chunk reads are aggregated per (user, volume, minute).  Bad input is a
4xx with a JSON message, never a traceback.  Configuration: traitlets on
:class:`DataService` (``--DataService.store=…``) or the environment the hub gives a managed
service.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import os
import posixpath
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, NoReturn
from urllib.parse import quote, unquote

from jupyterhub.services.auth import (
    HubOAuth,
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    UserNotAllowed,
)
from tornado import httpclient, web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop, PeriodicCallback
from traitlets import Dict, Float, Integer, List, TraitError, Unicode, default, validate
from traitlets.config import Application

from voxelhub.catalog import ProjectSettings
from voxelhub.catalog_sealing import CorruptValue
from voxelhub.store.encryption import CorruptChunk
from voxelhub.store.keys import MissingKey
from voxelhub.store.location import FsspecLocation
from voxelhub_data import decrypted_view, paths
from voxelhub_data.access import Caller, Role, roles_from_groups
from voxelhub_data.audit_trail import AuditTrail
from voxelhub_data.catalog_view import CatalogView, Conflict, Found, NotInCatalog, QueryError
from voxelhub_data.cohort_service import (
    CohortImports,
    CohortLimits,
    CohortRefused,
    export_package,
    parse_export,
)
from voxelhub_data.pulls import (
    PullRefused,
    PullRequest,
    Pulls,
    PullState,
    ServerNotAllowed,
    ServicePull,
    audit_detail,
    load_credentials,
    parse_request,
    server_key,
)
from voxelhub_data.uploads import (
    Limits,
    Upload,
    UploadRefused,
    Uploads,
    split_related,
    stow_response,
)

log = logging.getLogger("voxelhub.data")

CHUNK = 1 << 20


class DataService(Application):
    """The VoxelHub data service (a JupyterHub managed service)."""

    name = "voxelhub-data"
    description = __doc__

    store = Unicode(
        help="The store this service serves: a local folder (it alone may read it: mode 0700) "
        "or an fsspec URL of object storage (``s3://bucket/store``; then give catalog_url)."
    ).tag(config=True)

    @default("store")
    def _store_default(self) -> str:
        return os.environ.get("VOXELHUB_DATA_STORE", "")

    catalog_url = Unicode(
        help="SQLAlchemy URL of the catalog; default $VOXELHUB_DATA_CATALOG_URL, else the "
        "SQLite file inside a local store (object storage needs one)."
    ).tag(config=True)

    @default("catalog_url")
    def _catalog_url_default(self) -> str:
        return os.environ.get("VOXELHUB_DATA_CATALOG_URL", "")

    storage_options = Dict(
        help="fsspec options for an object-storage store (``endpoint_url``, ``key``, "
        "``secret`` …); default the JSON in $VOXELHUB_DATA_STORAGE_OPTIONS.  Credentials may "
        "also come from the usual AWS_* environment variables."
    ).tag(config=True)

    @default("storage_options")
    def _storage_options_default(self) -> dict[str, Any]:
        return dict(json.loads(os.environ.get("VOXELHUB_DATA_STORAGE_OPTIONS") or "{}"))

    storage_options_file = Unicode(
        help="JSON file of fsspec options for an object-storage store, credentials included "
        '(``{"key": …, "secret": …, "endpoint_url": …}``): readable by this service\'s '
        "account alone (a file others may read is refused).  Merged under storage_options.  "
        "Default $VOXELHUB_DATA_STORAGE_OPTIONS_FILE (the hub sets it; hub_config/README.md)."
    ).tag(config=True)

    @default("storage_options_file")
    def _storage_options_file_default(self) -> str:
        return os.environ.get("VOXELHUB_DATA_STORAGE_OPTIONS_FILE", "")

    def store_options(self) -> dict[str, Any]:
        """storage_options over the options file's, which is checked first."""
        if not self.storage_options_file:
            return dict(self.storage_options)
        path = self.storage_options_file
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise SystemExit(
                f"voxelhub-data: storage_options_file {path}: {exc.strerror}"
            ) from None
        with os.fdopen(fd) as f:
            if os.fstat(f.fileno()).st_mode & 0o077:
                raise SystemExit(
                    f"voxelhub-data: storage_options_file {path} is readable by others: rotate "
                    "its credentials and write it again with mode 0600"
                )
            try:
                options = json.load(f)
            except ValueError as exc:
                raise SystemExit(f"voxelhub-data: {path} is not JSON: {exc}") from None
        if not isinstance(options, dict):
            raise SystemExit(f"voxelhub-data: {path} must hold a JSON object of fsspec options")
        return {**options, **self.storage_options}

    presign_seconds = Integer(
        help="On object storage (an S3 store), answer a chunk read with 307 to a presigned URL "
        "valid this many seconds, so the bytes do not pass through the service.  The grant is "
        "checked and audited like a read (one allow record per user, volume and minute, action "
        "volume.presign; bytes are then not counted).  A presigned URL works for whoever holds "
        "it until it expires: keep this short (at most 60 s is advised).  0 (the default): "
        "off, every byte goes through the service.  Metadata (zarr.json) is always served.",
    ).tag(config=True)

    @default("presign_seconds")
    def _presign_seconds_default(self) -> int:
        return int(os.environ.get("VOXELHUB_DATA_PRESIGN_SECONDS") or 0)

    @validate("presign_seconds")
    def _check_presign_seconds(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if not 0 <= value <= 3600:
            raise TraitError(f"presign_seconds must be between 0 and 3600, not {value}")
        return value

    key_file = Unicode(
        help="Master key file of the store's encrypted projects (JSON, mode 0600, owned by the "
        "service's account, outside the store; default $VOXELHUB_KEY_FILE).  With it the service "
        "serves encrypted volumes decrypted (users never hold a key) and encrypts label images "
        "it writes for them; presigned URLs are then never given.  Empty: no keys."
    ).tag(config=True)

    @default("key_file")
    def _key_file_default(self) -> str:
        return os.environ.get("VOXELHUB_KEY_FILE", "")

    audit_log = Unicode(
        help="File of the hash-chained audit trail (0600, outside every user's reach)."
    ).tag(config=True)

    @default("audit_log")
    def _audit_log_default(self) -> str:
        return os.environ.get("VOXELHUB_AUDIT_LOG", "")

    dicomweb_servers = List(
        Unicode(),
        help="DICOMweb roots (e.g. https://pacs.example.org/dicom-web) curators may pull from "
        "through this service; any other URL is refused with 403 and audited, so a curator "
        "cannot make the service fetch arbitrary URLs.  Default: $VOXELHUB_DATA_DICOMWEB_SERVERS "
        "(space-separated); empty: no pulls.",
    ).tag(config=True)

    @default("dicomweb_servers")
    def _dicomweb_servers_default(self) -> list[str]:
        return os.environ.get("VOXELHUB_DATA_DICOMWEB_SERVERS", "").split()

    dicomweb_credentials_file = Unicode(
        help='JSON file {"<DICOMweb root>": {"user": …, "password": …} | {"token": …}} with '
        "the credentials of the allowed servers, mode 0600 (refused when others may read it); "
        "read at each pull, never logged.  Default: $VOXELHUB_DATA_DICOMWEB_CREDENTIALS_FILE."
    ).tag(config=True)

    @default("dicomweb_credentials_file")
    def _dicomweb_credentials_file_default(self) -> str:
        return os.environ.get("VOXELHUB_DATA_DICOMWEB_CREDENTIALS_FILE", "")

    pull_staging = Unicode(
        help="Private (0700) folder of this service's account where pulled instances wait for "
        "ingest (an interrupted pull resumes from it); default 'pulls' beside the audit log."
    ).tag(config=True)

    secrets_dir = Unicode(
        help="Private (0700) folder of the projects' de-identification secrets, for what this "
        "service ingests (pulls) into de-identified projects; default $VOXELHUB_SECRETS_DIR, "
        "else 'secrets' beside the audit log (the service's account has no home)."
    ).tag(config=True)

    cohort_max_bytes = Integer(
        16 << 30, help="Largest cohort package one import may send and unpack to (bytes)."
    ).tag(config=True)

    site_pseudonym = Unicode(
        help="This site's pseudonym in the provenance of the cohort packages curators export "
        "through this service (never a hospital's name); default $VOXELHUB_SITE; empty: the "
        "curator names it in the request."
    ).tag(config=True)

    @default("site_pseudonym")
    def _site_pseudonym_default(self) -> str:
        return os.environ.get("VOXELHUB_SITE", "")

    cohort_max_members = Integer(
        500_000, help="Most files and folders one imported cohort package may hold."
    ).tag(config=True)

    pull_max_workers = Integer(
        8, help="Most parallel WADO-RS streams one pull may use (a request asking more gets this)."
    ).tag(config=True)

    arrivals = Unicode(
        help="The DICOM edge's arrivals database (extensions/voxelhub_dicom), read for "
        "GET api/arrivals; empty when the hub runs no edge."
    ).tag(config=True)

    @default("arrivals")
    def _arrivals_default(self) -> str:
        return os.environ.get("VOXELHUB_DICOM_ARRIVALS", "")

    upload_dir = Unicode(
        help="Private (0700) folder of this service's account where uploaded zips are unpacked "
        "and checked before ingest, and deleted after; default $VOXELHUB_DATA_UPLOADS, else "
        "'uploads' beside the audit log."
    ).tag(config=True)

    @default("upload_dir")
    def _upload_dir_default(self) -> str:
        return os.environ.get("VOXELHUB_DATA_UPLOADS", "")

    upload_max_bytes = Integer(
        help="Largest zip one upload may send (bytes, compressed); larger: 413.  Default "
        "$VOXELHUB_DATA_UPLOAD_MAX_BYTES, else 1 GiB."
    ).tag(config=True)

    @default("upload_max_bytes")
    def _upload_max_bytes_default(self) -> int:
        return int(os.environ.get("VOXELHUB_DATA_UPLOAD_MAX_BYTES") or 1 << 30)

    upload_max_unpacked_bytes = Integer(
        help="Most bytes one upload may unpack to: a zip whose directory says more is refused "
        "(400), and bytes are counted again while unpacking (a zip bomb stops there).  Default "
        "$VOXELHUB_DATA_UPLOAD_MAX_UNPACKED_BYTES, else 4 GiB."
    ).tag(config=True)

    @default("upload_max_unpacked_bytes")
    def _upload_max_unpacked_default(self) -> int:
        return int(os.environ.get("VOXELHUB_DATA_UPLOAD_MAX_UNPACKED_BYTES") or 4 << 30)

    upload_max_files = Integer(
        help="Most files one uploaded zip may hold; more: refused with 400.  Default "
        "$VOXELHUB_DATA_UPLOAD_MAX_FILES, else 100000."
    ).tag(config=True)

    @default("upload_max_files")
    def _upload_max_files_default(self) -> int:
        return int(os.environ.get("VOXELHUB_DATA_UPLOAD_MAX_FILES") or 100_000)

    bind_url = Unicode(help="Where to listen (the hub sets $JUPYTERHUB_SERVICE_URL).").tag(
        config=True
    )

    @default("bind_url")
    def _bind_url_default(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8020")

    prefix = Unicode(help="URL prefix the proxy routes to this service.").tag(config=True)

    @default("prefix")
    def _prefix_default(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/voxelhub-data/")

    membership_seconds = Float(
        5.0,
        help="How long a token's user and their groups are cached: the most a membership change "
        "or a revoked token takes to apply.",
    ).tag(config=True)

    max_page = Integer(1000, help="Largest page of catalog rows one request may ask for.").tag(
        config=True
    )

    read_threads = Integer(
        16, help="Threads that read store files and run catalog queries, so reads overlap."
    ).tag(config=True)

    aliases = {  # noqa: RUF012 - traitlets' convention
        "store": "DataService.store",
        "catalog-url": "DataService.catalog_url",
        "audit-log": "DataService.audit_log",
        "bind-url": "DataService.bind_url",
        "presign-seconds": "DataService.presign_seconds",
        "storage-options-file": "DataService.storage_options_file",
    }

    def make_app(self) -> web.Application:
        if not self.store:
            raise SystemExit("voxelhub-data: no store: set --store or $VOXELHUB_DATA_STORE")
        if not self.audit_log:
            raise SystemExit("voxelhub-data: no audit log: set --audit-log or $VOXELHUB_AUDIT_LOG")
        prefix = "/" + self.prefix.strip("/") + "/"
        self.catalog = CatalogView(self.store, self.catalog_url or None, self.store_options())
        decrypted_view.use_key_file(self.store, self.key_file)  # encrypted volumes served clear
        audit_dir = os.path.dirname(os.path.abspath(self.audit_log))
        self.pulls = Pulls(self.pull_staging or os.path.join(audit_dir, "pulls"))
        secrets_dir = (
            self.secrets_dir
            or os.environ.get("VOXELHUB_SECRETS_DIR")
            or os.path.join(audit_dir, "secrets")
        )
        os.makedirs(secrets_dir, mode=0o700, exist_ok=True)
        os.environ["VOXELHUB_SECRETS_DIR"] = secrets_dir  # read by the de-identification
        self.pull_pool = ThreadPoolExecutor(2, thread_name_prefix="voxelhub-pull")
        self.cohorts = CohortImports(
            os.path.join(audit_dir, "cohorts"),
            CohortLimits(self.cohort_max_members, self.cohort_max_bytes),
        )
        self.audit = AuditTrail(self.audit_log)
        self.pool = ThreadPoolExecutor(self.read_threads, thread_name_prefix="voxelhub-data")
        self.uploads = Uploads(
            self.upload_dir
            or os.path.join(os.path.dirname(os.path.abspath(self.audit_log)), "uploads"),
            Limits(self.upload_max_files, self.upload_max_unpacked_bytes),
        )
        self.upload_pool = ThreadPoolExecutor(2, thread_name_prefix="voxelhub-upload")
        # the singleton the HubOAuthenticated handlers and the OAuth callback all use
        hub_auth = HubOAuth.instance(
            api_token=os.environ.get("JUPYTERHUB_API_TOKEN", ""),
            cache_max_age=int(max(1, self.membership_seconds)),
            oauth_redirect_uri=os.environ.get("JUPYTERHUB_OAUTH_CALLBACK_URL", ""),
        )
        settings = {
            "service": self,
            "hub_auth": hub_auth,
            "cookie_secret": os.urandom(32),
            "xsrf_cookies": False,  # checked in BaseHandler.check_xsrf for cookie requests
            "serve_traceback": False,
        }
        p = prefix
        return web.Application(
            [
                (p + "api/health", HealthHandler),
                (p + "api/?", WhoAmIHandler),
                (p + "api/projects", ProjectsHandler),
                (p + r"api/projects/([^/]+)/settings", ProjectSettingsHandler),
                (p + "api/series", SeriesHandler),
                (p + "api/studies", StudiesHandler),
                (p + r"api/volumes/([^/]+)", VolumeHandler),
                (p + r"api/volumes/([^/]+)/labels/([^/]+)", LabelsHandler),
                (p + r"api/volumes/([^/]+)/thumbnail", ThumbnailHandler),
                (p + "api/features", FeaturesHandler),
                (p + r"api/features/settings/([^/]+)", FeatureSettingsHandler),
                (p + r"api/store/(.*)", StoreHandler),
                (p + "api/audit", AuditHandler),
                (p + r"api/projects/([^/]+)/pulls", PullHandler),
                (p + r"api/pulls/([^/]+)", PullStatusHandler),
                (p + r"api/projects/([^/]+)/pull-queries", PullQueryHandler),
                (p + r"api/projects/([^/]+)/cohorts", CohortImportHandler),
                (p + r"api/projects/([^/]+)/cohort-exports", CohortExportHandler),
                (p + "api/arrivals", ArrivalsHandler),
                (p + r"api/projects/([^/]+)/uploads", UploadHandler),
                (p + r"api/uploads/([^/]+)", UploadStatusHandler),
                (p + r"api/projects/([^/]+)/studies", StowHandler),
                (p + "oauth_callback", HubOAuthCallbackHandler),
                (p + ".*", NotFoundHandler),
            ],
            **settings,
        )

    def ingest_upload(self, folder: str, project: str) -> Any:
        """Ingest an upload's checked files into ``project`` (its de-identification setting)."""
        from voxelhub.ingest import ingest

        return ingest(folder, self.catalog.location, project=project,
                      catalog_url=self.catalog_url or None, workers=1, progress=False,
                      key_file=self.key_file or None)  # fmt: skip

    def pull_into(self, request: PullRequest, project: str, progress: Any) -> Any:
        """Run a pull as this service's account into the store (the same code as
        ``voxelhub pull``), with the site's credentials for the server."""
        from voxelhub.dicomweb import Credentials, pull

        known = load_credentials(self.dicomweb_credentials_file)
        credentials = known.get(server_key(request.url)) or Credentials()
        return pull(request.url, self.catalog.location, request.query, project=project,
                    deidentify=request.deidentify, credentials=credentials,
                    workers=request.workers, staging=self.pulls.staging,
                    catalog_url=self.catalog_url or None, max_studies=request.max_studies,
                    ingest_workers=1, progress=False, on_progress=progress)  # fmt: skip

    def find_studies(self, request: PullRequest) -> dict[str, Any]:
        """The studies and instances a pull would bring (QIDO-RS), as the service sees them."""
        from voxelhub.dicomweb import Credentials
        from voxelhub.dicomweb.query import find_studies, plan_pull
        from voxelhub.dicomweb.server import Server

        known = load_credentials(self.dicomweb_credentials_file)
        server = Server(request.url, known.get(server_key(request.url)) or Credentials())
        studies = find_studies(server, request.query)
        plan = plan_pull(server, request.query, max_studies=request.max_studies)
        return {"studies": [asdict(s) for s in studies], "instances": len(plan.instances)}

    def withheld(self, project: str, request: PullRequest) -> bool:
        """Whether the audit trail must not name the pull's query or studies (the project is
        de-identified, or the pull asks for it)."""
        if request.deidentify:
            return True
        try:
            return bool(self.catalog.project_settings(project).deidentify)
        except NotInCatalog:
            return False

    def start(self) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s voxelhub-data %(message)s")
        app = self.make_app()
        from urllib.parse import urlparse

        url = urlparse(self.bind_url)
        server = HTTPServer(app, xheaders=True, max_body_size=2 << 30)
        server.listen(url.port or 80, url.hostname or "127.0.0.1")
        PeriodicCallback(self.audit.flush_due, 5_000).start()
        log.info("serving %s at %s%s", self.store, self.bind_url, self.prefix)
        try:
            IOLoop.current().start()
        finally:
            self.audit.close()


class BaseHandler(HubOAuthenticated, web.RequestHandler):  # type: ignore[misc]
    """Authentication, authorisation and JSON errors shared by every endpoint."""

    caller: Caller

    @property
    def service(self) -> DataService:
        return self.settings["service"]  # type: ignore[no-any-return]

    def check_xsrf_cookie(self) -> None:
        """Token requests cannot be forged by another site; cookie requests need the XSRF token."""
        if self.request.headers.get("Authorization"):
            return
        self.hub_auth.check_xsrf_cookie(self)

    async def prepare(self) -> None:  # type: ignore[override]
        self.started = time.monotonic()
        source = self.request.remote_ip or ""
        try:
            # asynchronously: the synchronous get_current_user() blocks the event loop on the
            # hub's API whenever the token cache expires (benchmarks/service.py found it)
            model = await self.hub_auth.get_user(self, sync=False)
            model = self.check_hub_user(model) if model else None
            self._hub_auth_user_cache = model
        except UserNotAllowed:
            model = None
        except web.HTTPError:
            model = None
        except Exception as exc:  # the hub is down, a malformed cookie …
            log.warning("authentication failed: %s", exc)
            model = None
        if not model:
            self.audit_denied("auth", "no valid hub token or login", user="", source=source)
            if self._browser_navigation():
                self.redirect(self.get_login_url())  # OAuth with the hub, then back here
                return
            raise web.HTTPError(401, "a valid JupyterHub token or login is required")
        name = str(model["name"])
        info = await self.user_info(name)
        self.caller = Caller(
            name=name,
            admin=bool(info.get("admin")),
            roles=roles_from_groups(info.get("groups", [])),
            client=self.request.headers.get("X-VoxelHub-Client", "")[:40],
            source=source,
        )
        if self.request.method in ("POST", "PUT", "PATCH", "DELETE"):
            try:
                self.check_xsrf_cookie()
            except web.HTTPError:
                self.deny(self.request.method.lower(), "missing or wrong XSRF token", status=403)

    def _browser_navigation(self) -> bool:
        """A browser opening a page (GET, asks for HTML, no token): it may sign in by OAuth.
        API clients get a 401 instead of a redirect."""
        return (
            self.request.method == "GET"
            and "text/html" in self.request.headers.get("Accept", "")
            and not self.request.headers.get("Authorization")
        )

    async def user_info(self, name: str) -> dict[str, Any]:
        """The user's groups and admin flag, asked of the hub with the service's own token."""
        cache: dict[str, tuple[float, dict[str, Any]]] = self.settings.setdefault("users", {})
        hit = cache.get(name)
        if hit and time.monotonic() - hit[0] < self.service.membership_seconds:
            return hit[1]
        auth = self.hub_auth
        url = f"{auth.api_url.rstrip('/')}/users/{quote(name)}"
        client = httpclient.AsyncHTTPClient()
        try:
            response = await client.fetch(
                url, headers={"Authorization": f"token {auth.api_token}"}, request_timeout=10
            )
        except httpclient.HTTPClientError as exc:
            self.audit_denied("auth", f"the hub does not know user {name}", user=name)
            raise web.HTTPError(403, "your hub account could not be checked") from exc
        info = json.loads(response.body)
        cache[name] = (time.monotonic(), info)
        return info  # type: ignore[no-any-return]

    # -- decisions --------------------------------------------------------------------------------
    def audit_denied(self, action: str, reason: str, **fields: Any) -> None:
        self.service.audit.decision(
            action=action,
            decision="deny",
            reason=reason,
            detail={"path": self.request.path[:300], "method": self.request.method},
            **{"source": self.request.remote_ip or "", **fields},
        )

    def deny(self, action: str, reason: str, *, status: int = 403, **fields: Any) -> NoReturn:
        detail = {"path": self.request.path[:300], "method": self.request.method}
        self.service.audit.decision(
            user=self.caller.name,
            client=self.caller.client,
            source=self.caller.source,
            action=action,
            decision="deny",
            reason=reason,
            detail={**detail, **fields.pop("detail", {})},
            **fields,
        )
        raise web.HTTPError(status, reason)

    def allow(self, action: str, **fields: Any) -> None:
        self.service.audit.decision(
            user=self.caller.name,
            client=self.caller.client,
            source=self.caller.source,
            action=action,
            decision="allow",
            **fields,
        )

    def require(self, project: str, role: Role, action: str, **fields: Any) -> None:
        if not self.caller.may(project, role):
            have = self.caller.role_in(project)
            reason = (
                f"{self.caller.name} is not a member of project {project!r}"
                if have is None
                else f"{self.caller.name} is a {have.name.lower()} of {project!r}; "
                f"{action} needs {role.name.lower()}"
            )
            self.deny(action, reason, project=project, **fields)

    # -- output -------------------------------------------------------------------------------
    def curated_project(self, raw: str, action: str) -> str:
        """The project named in the URL, of which the caller must be a curator (else 400 or
        403, audited)."""
        try:
            project = paths.project_name(unquote(raw))
        except paths.BadPath as exc:
            self.deny(action, str(exc), status=400)
        self.require(project, Role.CURATOR, action)
        return project

    def pull_request(self, project: str, action: str) -> Any:
        """The pull (or query) in the body, for an allowed DICOMweb server (else 403 or 400,
        audited with the kind of refusal)."""
        service = self.service
        try:
            return parse_request(self.request.body, service.dicomweb_servers,
                                 service.pull_max_workers)  # fmt: skip
        except ServerNotAllowed as exc:
            self.deny(action, str(exc), status=403, project=project,
                      detail={"kind": type(exc).__name__})  # fmt: skip
        except PullRefused as exc:
            self.deny(action, str(exc), status=400, project=project,
                      detail={"kind": type(exc).__name__})  # fmt: skip

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(payload, default=_json_default))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code >= 500:
            message = "internal error (logged at the service)"
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"status": status_code, "message": message}))

    def run(self, fn: Any, *args: Any) -> Awaitable[Any]:
        return asyncio.get_running_loop().run_in_executor(self.service.pool, fn, *args)


class HealthHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish({"status": "ok"})


class NotFoundHandler(BaseHandler):
    def get(self) -> None:
        self.deny("unknown", f"no endpoint {self.request.path[:200]}", status=404)

    post = put = delete = head = patch = get  # type: ignore[assignment]


class WhoAmIHandler(BaseHandler):
    def get(self) -> None:
        c = self.caller
        self.write_json(
            {
                "name": c.name,
                "admin": c.admin,
                "projects": {p: r.name.lower() for p, r in sorted(c.roles.items())},
            }
        )


class ProjectsHandler(BaseHandler):
    async def get(self) -> None:
        frame = await self.run(self.service.catalog.projects, self.caller.projects)
        self.allow("catalog.projects", detail={"rows": len(frame)})
        self.write_json({"projects": frame.to_dict(orient="records")})


class ProjectSettingsHandler(BaseHandler):
    """A project's de-identification settings: members read them, curators change them.

    ``PUT`` takes a JSON object ``{"deidentify": true|false}``; a project not yet in the
    catalog is created with it (before its first ingest).  While the project holds volumes
    the setting is fixed (409): they were ingested under it.
    """

    async def get(self, raw: str) -> None:
        action = "project.settings"
        name = self._project(action, raw)
        self.require(name, Role.VIEWER, action)
        try:
            settings = await self.run(self.service.catalog.project_settings, name)
        except NotInCatalog as exc:
            self.deny(action, str(exc), status=404, project=name)
        self.allow(action, project=name)
        self.write_json(_settings_json(settings))

    async def put(self, raw: str) -> None:
        action = "project.settings.write"
        name = self._project(action, raw)
        self.require(name, Role.CURATOR, action)
        try:
            body = json.loads(self.request.body or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            self.deny(action, f"the body is not JSON: {exc}", status=400, project=name)
        if not isinstance(body, dict) or set(body) != {"deidentify"}:
            self.deny(
                action,
                'the body is a JSON object {"deidentify": true|false}, the one setting a '
                f"project has; got {str(body)[:80]}",
                status=400,
                project=name,
            )
        if not isinstance(body["deidentify"], bool):
            self.deny(action, "deidentify must be true or false", status=400, project=name)
        try:
            settings = await self.run(
                self.service.catalog.set_project_settings, name, body["deidentify"]
            )
        except Conflict as exc:
            self.deny(action, str(exc), status=409, project=name, detail=body)
        self.allow(action, project=name, detail=body)
        self.write_json(_settings_json(settings))

    def _project(self, action: str, raw: str) -> str:
        try:
            return paths.project_name(unquote(raw))
        except paths.BadPath as exc:
            self.deny(action, str(exc), status=400)
            raise  # deny raised already; for the type checker


def _settings_json(settings: ProjectSettings) -> dict[str, Any]:
    return {**asdict(settings), "locked": settings.locked}


class _QueryHandler(BaseHandler):
    """Catalog queries: parameters checked, filtered to the caller's projects, paged."""

    kind = ""
    allowed = frozenset[str]()

    async def get(self) -> None:
        args = {k: self.get_argument(k) for k in self.request.arguments}
        fmt = args.pop("format", "json")
        unknown = sorted(set(args) - self.allowed)
        if unknown or fmt not in ("json", "parquet"):
            self.deny(
                f"catalog.{self.kind}", f"unknown parameter(s) {unknown or [fmt]}", status=400
            )
        args = {k: v for k, v in args.items() if v}  # tornado drops control characters
        detail = await self.run(self.service.catalog.audit_args, args)
        project = args.get("project")
        if project:
            self.require(project, Role.VIEWER, f"catalog.{self.kind}", detail=detail)
        try:
            frame = await self.run(
                self.service.catalog.query,
                self.kind,
                args,
                self.caller.projects,
                self.service.max_page,
            )
        except QueryError as exc:
            self.deny(f"catalog.{self.kind}", str(exc), status=400, detail=detail)
        except (MissingKey, CorruptValue) as exc:
            # sealed catalog columns the service cannot open: its keys or its database, said
            status = 503 if isinstance(exc, MissingKey) else 502
            self.deny(f"catalog.{self.kind}", str(exc), status=status, detail=detail)
        self.allow(
            f"catalog.{self.kind}", project=project or "", detail={**detail, "rows": len(frame)}
        )
        cursor = frame.attrs.get("next_cursor")
        if cursor:
            self.set_header("X-Next-Cursor", cursor)
        if fmt == "parquet":
            buf = io.BytesIO()
            frame.to_parquet(buf, index=False)
            self.set_header("Content-Type", "application/vnd.apache.parquet")
            self.set_header("Cache-Control", "no-store")
            self.finish(buf.getvalue())
            return
        self.write_json({"rows": frame.to_dict(orient="records"), "next_cursor": cursor})


class SeriesHandler(_QueryHandler):
    kind = "series"
    allowed = frozenset(
        {"study_uid", "modality", "project", "text", "flag", "uid", "limit", "offset", "after"}
    )


class StudiesHandler(_QueryHandler):
    kind = "studies"
    allowed = frozenset({"modality", "project", "patient", "text", "limit", "offset", "after"})


class VolumeHandler(BaseHandler):
    async def get(self, uid: str) -> None:
        found = await self.run(self.service.catalog.volume, unquote(uid))
        if found is None:
            self.deny("volume.metadata", f"no volume {uid[:80]!r} in your projects", status=404)
        self.require(found.project, Role.VIEWER, "volume.metadata", volume=found.volume_uid)
        stored = await self.run(self.service.catalog.stored, found.store_path)
        self.allow(
            "volume.metadata",
            project=found.project,
            patient=found.patient,
            study=found.study_uid,
            volume=found.volume_uid,
        )
        self.write_json(stored.to_json())

    async def delete(self, uid: str) -> None:
        """Remove the volume (curators of its project): catalog row first, then its files."""
        action = "volume.delete"
        if self.request.arguments:
            self.deny(action, f"unknown parameter(s) {sorted(self.request.arguments)}", status=400)
        found = await self.run(self.service.catalog.volume, unquote(uid))
        if found is None:
            self.deny(action, f"no volume {uid[:80]!r} in your projects", status=404)
        where = {"patient": found.patient, "study": found.study_uid, "volume": found.volume_uid}
        self.require(found.project, Role.CURATOR, action, **where)
        try:
            # by the UID as given: a SeriesInstanceUID split into several volumes is refused
            # there (one of them must be named), never resolved to an arbitrary split
            deleted = await self.run(self.service.catalog.delete_volume, unquote(uid))
        except NotInCatalog as exc:  # split, or another curator deleted it a moment ago
            self.deny(action, str(exc), status=404, project=found.project, **where)
        self.allow(
            action,
            project=found.project,
            **where,
            detail={"store_path": deleted.store_path, "feature_rows": deleted.feature_rows},
        )
        self.write_json(asdict(deleted))


class ThumbnailHandler(BaseHandler):
    """A small grey PNG of one slice of the smallest stored level (checked like a volume read).

    ``z``: the slice, in full-resolution voxels along ``axis`` (default the middle);
    ``axis``: ``z`` (axial, default), ``y`` (coronal) or ``x`` (sagittal).
    """

    async def get(self, uid: str) -> None:
        action = "volume.thumbnail"
        unknown = sorted(set(self.request.arguments) - {"z", "axis"})
        if unknown:
            self.deny(action, f"unknown parameter(s) {unknown}", status=400)
        axis = self.get_argument("axis", "z")
        raw = self.get_argument("z", "")
        try:
            index = int(raw) if raw else None
        except ValueError:
            self.deny(action, f"z must be an integer, not {raw[:20]!r}", status=400)
        if axis not in ("z", "y", "x"):
            self.deny(action, f"axis must be z, y or x, not {axis[:20]!r}", status=400)
        found = await self.run(self.service.catalog.volume, unquote(uid))
        if found is None:
            self.deny(action, f"no volume {uid[:80]!r} in your projects", status=404)
        self.require(found.project, Role.VIEWER, action, volume=found.volume_uid)
        try:
            png = await self.run(self.service.catalog.thumbnail, found.store_path, index, axis)
        except ValueError as exc:  # a slice outside the volume
            self.deny(action, str(exc), status=400, project=found.project)
        self.allow(
            action,
            project=found.project,
            patient=found.patient,
            study=found.study_uid,
            volume=found.volume_uid,
            nbytes=len(png),
            detail={"axis": axis, "z": index},
        )
        self.set_header("Content-Type", "image/png")
        self.set_header("Cache-Control", "private, no-store")
        self.finish(png)


class StoreHandler(BaseHandler):
    """Zarr keys, whole or by one byte range; every read is checked and (aggregated) audited."""

    async def head(self, raw: str) -> None:
        await self.get(raw, body=False)

    def delete(self, raw: str) -> None:
        self.deny(
            "volume.write",
            "the store is read-only here: delete a volume with DELETE api/volumes/<uid>, write "
            "labels with PUT api/volumes/<uid>/labels/<name>",
            status=405,
            detail={"key": raw[:200]},
        )

    put = post = patch = delete

    async def get(self, raw: str, body: bool = True) -> None:  # type: ignore[override]
        action = "volume.read"
        try:
            key = paths.parse(raw)
        except paths.BadPath as exc:
            self.deny(action, f"bad store key: {exc}", status=400, detail={"key": raw[:200]})
        self.require(key.project, Role.VIEWER, action, volume=key.volume_path)
        chunk = key.key.rsplit("/", 1)[-1] != "zarr.json"
        presign = self.service.presign_seconds and not self.service.key_file  # never ciphertext
        if body and chunk and presign and await self._presigned(key):
            return
        # one trip to the thread pool per read: the volume lookup (cached), the checked open,
        # the range and the read together (each hop is a GIL hand-off and a loop wake-up)
        try:
            found, read = await self.run(
                _read_key,
                self.service.catalog,
                self.service.store,
                key,
                self.request.headers.get("Range"),
                body,
            )
        except FileNotFoundError:
            # zarr asks for keys that may not exist (e.g. a missing chunk): an ordinary 404
            self.set_status(404)
            self.finish(json.dumps({"status": 404, "message": f"no key {key.key!r}"}))
            return
        except (IsADirectoryError, NotADirectoryError):
            self.deny(action, f"{key.key!r} is not a key", status=404, project=key.project)
        except _RangeRefused as exc:
            self.set_header("Content-Range", f"bytes */{exc.size}")
            self.deny(action, str(exc), status=416, project=key.project)
        except OSError as exc:  # ELOOP: a symbolic link planted in the store
            self.deny(
                action, f"refused {key.key!r}: {exc.strerror}", status=403, project=key.project
            )
        except (MissingKey, CorruptChunk, decrypted_view.UnsupportedLayout) as exc:
            # an encrypted volume the service cannot open: said, never served as voxels
            status = 503 if isinstance(exc, MissingKey) else 502
            self.deny(action, str(exc), status=status, project=key.project)
        if found is None:
            self.deny(action, f"no volume at {key.volume_path}", status=404, project=key.project)
        self._audit_read(found, key, nbytes=len(read.data))
        if read.partial:
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {read.start}-{read.stop - 1}/{read.size}")
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("Cache-Control", "private, no-store")
        self.set_header("Content-Length", str(read.stop - read.start))
        if body:
            self.write(read.data)
        await self.finish()

    def _audit_read(self, found: Found, key: paths.VolumeKey, **fields: Any) -> None:
        """One read (or grant) of ``key`` of volume ``found``, aggregated per user, volume and
        minute by the audit log."""
        self.service.audit.read(
            user=self.caller.name,
            client=self.caller.client,
            source=self.caller.source,
            project=found.project,
            patient=found.patient,
            study=found.study_uid,
            volume=found.volume_uid,
            labels=key.key.split("/")[1] if key.is_labels and "/" in key.key else "",
            **fields,
        )

    async def _presigned(self, key: paths.VolumeKey) -> bool:
        """Answer ``307`` to a presigned URL of the key (object storage); False: not possible
        here (a local store), read it through the service."""
        seconds = self.service.presign_seconds
        found, url = await self.run(_presign_key, self.service.catalog, key, seconds)
        if found is None:
            self.deny(
                "volume.read", f"no volume at {key.volume_path}", status=404, project=key.project
            )
        if url is None:
            return False
        self._audit_read(
            found, key, nbytes=0, action="volume.presign", reason=f"presigned URL valid {seconds} s"
        )
        self.set_header("Cache-Control", "private, no-store")
        self.redirect(url, status=307)
        return True


def _presign_key(
    catalog: CatalogView, key: paths.VolumeKey, seconds: int
) -> tuple[Found | None, str | None]:
    """In a pool thread: the volume ``key`` belongs to, and a presigned URL of the key (None
    where the store has none).  Nothing is signed for a path the catalog does not know."""
    found = catalog.by_path(key.volume_path)
    if found is None:
        return None, None
    return found, catalog.location.presign(posixpath.join(key.volume_path, key.key), seconds)


class _RangeRefused(paths.BadRange):
    """A Range the key's size cannot satisfy; carries the size for ``Content-Range``."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


@dataclass(frozen=True)
class _Read:
    data: bytes
    start: int
    stop: int
    size: int
    partial: bool


def _read_key(
    catalog: CatalogView, store: str, key: paths.VolumeKey, header: str | None, body: bool
) -> tuple[Found | None, _Read]:
    """In a pool thread: the volume ``key`` belongs to, then the key's bytes (or its range).

    Nothing is opened for a path the catalog does not know (``found`` None, no read).
    """
    found = catalog.by_path(key.volume_path)
    if found is None:
        return None, _Read(b"", 0, 0, 0, False)
    if isinstance(catalog.location, FsspecLocation):
        return found, _read_object(catalog.location, key, header, body)
    if decrypted_view.enabled():
        view = decrypted_view.read(key, decrypted_view.LocalVolume(store, key))
        if view is not None:
            with view:
                return found, _served(view, header, body)
    fd = paths.open_key(store, key)
    try:
        size = os.fstat(fd).st_size
        try:
            span = paths.byte_range(header, size)
        except paths.BadRange as exc:
            raise _RangeRefused(str(exc), size) from None
        start, stop = span if span else (0, size)
        data = os.pread(fd, stop - start, start) if body else b""
    finally:
        os.close(fd)
    return found, _Read(data, start, stop, size, span is not None)


def _served(view: decrypted_view.View, header: str | None, body: bool) -> _Read:
    """The ``Range`` of a key of an encrypted volume, decrypted (only what the range covers)."""
    try:
        span = paths.byte_range(header, view.size)
    except paths.BadRange as exc:
        raise _RangeRefused(str(exc), view.size) from None
    start, stop = span if span else (0, view.size)
    data = view.read(start, stop) if body and stop > start else b""
    return _Read(data, start, stop, view.size, span is not None)


def _read_object(
    location: FsspecLocation, key: paths.VolumeKey, header: str | None, body: bool
) -> _Read:
    """A key of a store on object storage (no links there; the key was checked as text)."""
    if not key.key:
        raise IsADirectoryError(key.volume_path)
    rel = posixpath.join(key.volume_path, key.key)
    size = location.key_size(rel)
    try:
        span = paths.byte_range(header, size)
    except paths.BadRange as exc:
        raise _RangeRefused(str(exc), size) from None
    start, stop = span if span else (0, size)
    data = location.read_range(rel, start, stop) if body and stop > start else b""
    return _Read(data, start, stop, size, span is not None)


class LabelsHandler(BaseHandler):
    """Write a label image for a volume: the body is a NumPy ``.npy`` array of its shape.

    Query arguments (JSON): ``names`` ``{value: name}``, ``colors`` ``{value: [r, g, b(, a)]}``
    (0-255), ``source`` an object stored with the label image; ``overwrite=true`` replaces one
    of the same name (otherwise 409).
    """

    async def put(self, uid: str, name: str) -> None:
        action = "labels.write"
        found = await self.run(self.service.catalog.volume, unquote(uid))
        if found is None:
            self.deny(action, f"no volume {uid[:80]!r} in your projects", status=404)
        self.require(found.project, Role.ANALYST, action, volume=found.volume_uid, labels=name)
        try:
            names = {int(k): str(v) for k, v in self._json_object("names").items()}
            colors = {int(k): _rgba(v) for k, v in self._json_object("colors").items()}
            source = self._json_object("source")
            overwrite = self.get_argument("overwrite", "false") == "true"
        except (ValueError, TypeError, AttributeError) as exc:
            self.deny(action, f"bad arguments: {exc}", status=400, volume=found.volume_uid)
        try:
            written = await self.run(
                self.service.catalog.write_labels,
                found.volume_uid,
                bytes(self.request.body),
                name,
                names,
                overwrite,
                colors,
                source,
            )
        except Conflict as exc:
            self.deny(action, str(exc), status=409, volume=found.volume_uid, labels=name)
        except ValueError as exc:  # not an array, wrong shape, bad name (VoxelHubError included)
            self.deny(action, str(exc), status=400, volume=found.volume_uid, labels=name)
        self.allow(
            action,
            project=found.project,
            patient=found.patient,
            study=found.study_uid,
            volume=found.volume_uid,
            labels=name,
            nbytes=len(self.request.body),
        )
        self.write_json(
            {
                "name": written.name,
                "rel_path": written.rel_path,
                "names": {str(k): v for k, v in written.names.items()},
                "dtype": written.dtype,
                "checksum": written.checksum,
            },
            status=201,
        )

    def _json_object(self, argument: str) -> dict[str, Any]:
        value = json.loads(self.get_argument(argument, "{}"))
        if not isinstance(value, dict):
            raise ValueError(f"{argument} must be a JSON object")
        return value


def _rgba(value: Any) -> list[int]:
    """A label colour: 3 or 4 integers 0-255."""
    if not isinstance(value, list) or len(value) not in (3, 4):
        raise ValueError(f"a colour is [r, g, b] or [r, g, b, a], not {str(value)[:40]}")
    rgba = [int(c) for c in value]
    if any(not 0 <= c <= 255 for c in rgba):
        raise ValueError(f"colour components are 0-255, not {rgba}")
    return rgba


class FeaturesHandler(BaseHandler):
    """Cohort feature tables (``voxelhub.features`` result rows) in the catalog's database.

    A write is a Parquet table with :data:`~voxelhub.features.results.COLUMNS` and the
    settings' JSON in its schema metadata; every row's ``series`` is a volume UID, and the
    caller must be an analyst (or curator) of every project those volumes belong to, or
    nothing is stored.  Rows replace earlier ones of the same (series, ROI, settings).
    """

    async def put(self) -> None:
        action = "features.write"
        body = bytes(self.request.body)
        try:
            table = await self.run(self.service.catalog.read_feature_table, body)
        except NotInCatalog as exc:
            self.deny(action, str(exc), status=404)
        except QueryError as exc:
            self.deny(action, str(exc), status=400)
        for found in {f.project: f for f in table.volumes.values()}.values():
            self.require(found.project, Role.ANALYST, action, volume=found.volume_uid)
        await self.run(self.service.catalog.save_features, table)
        rows = table.frame.groupby("series").size().to_dict()
        for series, found in table.volumes.items():
            self.allow(
                action,
                project=found.project,
                patient=found.patient,
                study=found.study_uid,
                volume=found.volume_uid,
                nbytes=len(body) if len(table.volumes) == 1 else 0,
                detail={"rows": int(rows[series]), "settings_hash": table.settings.hash},
            )
        self.write_json(
            {
                "rows": len(table.frame),
                "volumes": sorted(table.volumes),
                "settings_hash": table.settings.hash,
            },
            status=201,
        )

    post = put

    async def get(self) -> None:
        action = "features.read"
        unknown = sorted(set(self.request.arguments) - {"settings_hash", "series", "format"})
        fmt = self.get_argument("format", "json")
        if unknown or fmt not in ("json", "parquet"):
            self.deny(action, f"unknown parameter(s) {unknown or [fmt]}", status=400)
        settings_hash = self.get_argument("settings_hash", "")
        series = [s for s in self.get_arguments("series") if s]
        if len(settings_hash) > 64 or len(series) > 1000 or any(len(s) > 128 for s in series):
            self.deny(action, "settings_hash, series: too long or too many", status=400)
        frame, volumes = await self.run(
            self.service.catalog.features, settings_hash, series, self.caller.projects
        )
        # one record per volume whose rows were given: "who saw this patient's results"
        rows = frame.groupby("series").size().to_dict()
        for series_name, found in volumes.items():
            self.allow(
                action,
                project=found.project,
                patient=found.patient,
                study=found.study_uid,
                volume=found.volume_uid,
                detail={"rows": int(rows.get(series_name, 0)), "settings_hash": settings_hash},
            )
        if not volumes:
            self.allow(action, detail={"settings_hash": settings_hash, "rows": 0})
        if fmt == "parquet":
            buf = io.BytesIO()
            frame.to_parquet(buf, index=False)
            self.set_header("Content-Type", "application/vnd.apache.parquet")
            self.set_header("Cache-Control", "no-store")
            self.finish(buf.getvalue())
            return
        self.write_json({"rows": frame.to_dict(orient="records")})


class FeatureSettingsHandler(BaseHandler):
    """The settings JSON of a stored hash (settings carry no patient data)."""

    async def get(self, settings_hash: str) -> None:
        text = await self.run(self.service.catalog.feature_settings, settings_hash[:64])
        if text is None:
            self.deny("features.settings", f"no settings {settings_hash[:64]!r}", status=404)
        self.allow("features.settings", detail={"settings_hash": settings_hash[:64]})
        self.write_json({"settings_hash": settings_hash, "settings": text})


class AuditHandler(BaseHandler):
    """The audit trail, filtered; for hub admins only."""

    async def get(self) -> None:
        if not self.caller.admin:
            self.deny("audit.query", f"{self.caller.name} is not a hub admin")
        args = {k: self.get_argument(k) for k in self.request.arguments}
        unknown = sorted(set(args) - {"user", "patient", "series", "project", "since", "action"})
        if unknown:
            self.deny("audit.query", f"unknown parameter(s) {unknown}", status=400)
        query: dict[str, Any] = dict(args)
        if "patient" in args:  # sealed projects' records name the patient by blind index
            try:
                names = await self.run(self.service.catalog.catalog.audit_names, args["patient"])
            except MissingKey as exc:
                self.deny("audit.query", str(exc), status=503)
            query["patient"] = names
            args["patient"] = ",".join(names[1:]) or names[0]  # this record names no more
        try:
            rows = await self.run(self.service.audit.query, query)
        except ValueError as exc:
            self.deny("audit.query", str(exc), status=400)
        self.allow("audit.query", detail=args)
        self.write_json({"records": rows})


class PullHandler(BaseHandler):
    """A curator's pull from an allowed DICOMweb server, run by the service in the background
    (:mod:`voxelhub_data.pulls`); 202 with the id ``GET api/pulls/<id>`` reads."""

    async def post(self, raw: str) -> None:
        action = "dicom.pull"
        project = self.curated_project(raw, action)
        service = self.service
        request = self.pull_request(project, action)
        withheld = await self.run(service.withheld, project, request)
        job = service.pulls.new(project, self.caller.name, request)
        self.allow(action, project=project, detail=audit_detail(job, withheld))
        loop = IOLoop.current()
        caller = self.caller

        def finished(state: PullState) -> None:  # on the IOLoop, where the trail is written
            report = job.report or {}
            first_line = (job.message.splitlines() or [""])[0][:500]
            reason = job.error if withheld and job.error else first_line
            if withheld and not job.error:
                reason = f"pull {job.id}: {state.value}, exit status {job.exit_code}"
            service.audit.decision(
                user=caller.name, client=caller.client, source=caller.source,
                action="dicom.pull.result", decision="allow" if job.exit_code < 2 else "deny",
                reason=reason, project=project, nbytes=int(report.get("nbytes", 0)),
                count=int(report.get("instances", 0)), detail=audit_detail(job, withheld),
            )  # fmt: skip
            job.state = state

        def work() -> None:
            loop.add_callback(finished, service.pulls.run(job, request, service.pull_into))

        service.pull_pool.submit(work)
        self.write_json(job.to_json(), status=202)


class PullQueryHandler(BaseHandler):
    """What a pull would bring, asked of an allowed server by the service (curators: the
    answer names patients); the same body as a pull's."""

    async def post(self, raw: str) -> None:
        from voxelhub.dicomweb import PullError

        action = "dicom.query"
        project = self.curated_project(raw, action)
        service = self.service
        request = self.pull_request(project, action)
        withheld = await self.run(service.withheld, project, request)
        detail: dict[str, Any] = {"server": request.url}
        if not withheld:
            detail["query"] = request.describe()
        try:
            found = await self.run(service.find_studies, request)
        except PullError as exc:
            kind = type(exc).__name__
            reason = kind if withheld else str(exc)[:500]
            try:  # audited as every denial; the answer also names the kind for the client
                self.deny(action, reason, status=400, project=project,
                          detail={**detail, "kind": kind})  # fmt: skip
            except web.HTTPError:
                self.write_json({"status": 400, "message": str(exc)[:2000], "kind": kind}, 400)
                return
        self.allow(action, project=project, count=found["instances"],
                   detail={**detail, "studies": len(found["studies"])})  # fmt: skip
        self.write_json(found)


class PullStatusHandler(BaseHandler):
    """A pull's state and report: its requester, curators of its project, hub admins."""

    def get(self, pull_id: str) -> None:
        action = "dicom.pull.read"
        job: ServicePull | None = self.service.pulls.get(pull_id[:64])
        if job is None:
            self.deny(action, f"no pull {pull_id[:64]!r}", status=404)
        if job.user != self.caller.name:
            self.require(job.project, Role.CURATOR, action, detail={"pull": job.id})
        self.allow(action, project=job.project, detail={"pull": job.id})
        self.write_json(job.to_json())


@web.stream_request_body
class CohortImportHandler(BaseHandler):
    """A curator's cohort package (a tar of ``voxelhub cohort export``'s folder), streamed to
    the service's private folder, verified and imported (:mod:`voxelhub_data.cohort_service`)."""

    folder = ""

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        if self._finished:
            return
        action = "cohort.import"
        if self.request.method != "POST":
            self.deny(action, "a package is sent with POST", status=405)
        try:
            self.project = paths.project_name(unquote(self.path_args[0]))
        except paths.BadPath as exc:
            self.deny(action, str(exc), status=400)
        self.require(self.project, Role.CURATOR, action)
        size = int(self.request.headers.get("Content-Length") or 0)
        limit = self.service.cohort_max_bytes
        if size > limit:
            self.deny(action, f"the package is {size} bytes; one may be {limit}", status=413,
                      project=self.project)  # fmt: skip
        self.request.connection.set_max_body_size(limit)
        self.folder = self.service.cohorts.new()
        self.nbytes = 0
        self.file = open(os.path.join(self.folder, "package.tar"), "wb")  # noqa: SIM115

    def data_received(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.nbytes += len(chunk)

    async def post(self, raw: str) -> None:
        from voxelhub.cohort import CohortError, ImportConflict, TamperedPackage

        action = "cohort.import"
        self.file.close()
        service = self.service
        try:
            done = await self.run(service.cohorts.run, self.folder, self.project,
                                  service.catalog.location, service.catalog_url or None)  # fmt: skip
        except (CohortRefused, CohortError) as exc:
            status = 409 if isinstance(exc, ImportConflict) else 400
            kind, message = type(exc).__name__, str(exc)[:2000]
            try:  # audited as every denial; the answer also names the kind for the client
                self.deny(action, message, status=status, project=self.project,
                          nbytes=self.nbytes, detail={"kind": kind})  # fmt: skip
            except web.HTTPError:
                answer = {"status": status, "message": message, "kind": kind}
                if isinstance(exc, TamperedPackage):
                    answer["object"] = exc.object  # the object the package's checksums fault
                self.write_json(answer, status)
                return
        provenance = done.get("provenance") or {}
        self.allow(action, project=self.project, nbytes=self.nbytes,
                   count=len(done["written"]) + len(done["unchanged"]),
                   detail={"written": done["written"], "unchanged": done["unchanged"],
                           "feature_rows": done["feature_rows"],
                           "source_site": provenance.get("source_site")})  # fmt: skip
        self.write_json(done)

    def on_connection_close(self) -> None:
        if self.folder:
            self.file.close()
            self.service.cohorts.discard(self.folder)


class CohortExportHandler(BaseHandler):
    """A curator's de-identified selection as a cohort package (``voxelhub cohort export`` on
    the hub): curators only, as the package leaves the site; answered as a tar."""

    async def post(self, raw: str) -> None:
        from voxelhub.cohort import CohortError
        from voxelhub.errors import NotFound

        action = "cohort.export"
        project = self.curated_project(raw, action)
        service = self.service
        try:
            request = parse_export(self.request.body)
        except CohortRefused as exc:
            self.deny(action, str(exc), status=400, project=project)
        site = service.site_pseudonym or request.site or ""
        folder = service.cohorts.new()
        try:
            body, done = await self.run(export_package, folder, project, request, site,
                                        service.catalog.location, service.catalog_url or None)  # fmt: skip
        except (CohortError, NotFound) as exc:
            status, kind = (404 if isinstance(exc, NotFound) else 400), type(exc).__name__
            try:  # audited as every denial; the answer also names the kind for the client
                self.deny(action, str(exc)[:2000], status=status, project=project,
                          detail={"kind": kind})  # fmt: skip
            except web.HTTPError:
                self.write_json({"status": status, "message": str(exc)[:2000], "kind": kind},
                                status)  # fmt: skip
                return
        self.allow(action, project=project, nbytes=len(body), count=done["volumes"],
                   detail={"manifest_sha256": done["manifest_sha256"], "site": site,
                           "objects": done["objects"], "selection": asdict(request)})  # fmt: skip
        self.set_header("Content-Type", "application/x-tar")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-VoxelHub-Manifest-SHA256", done["manifest_sha256"])
        self.finish(body)


class ArrivalsHandler(BaseHandler):
    """What the DICOM edge received for a project, with each arrival's state and rejections."""

    async def get(self) -> None:
        action = "dicom.arrivals"
        unknown = sorted(set(self.request.arguments) - {"project", "limit"})
        if unknown:
            self.deny(action, f"unknown parameter(s) {unknown}", status=400)
        project = self.get_argument("project", "")
        try:
            limit = max(1, min(int(self.get_argument("limit", "200")), self.service.max_page))
        except ValueError:
            self.deny(action, "limit must be a number", status=400)
        if project:
            self.require(project, Role.CURATOR, action)
        elif not self.caller.admin:
            self.deny(action, "project= is required", status=400)
        rows = await self.run(_arrivals, self.service.arrivals, project, limit)
        self.allow(action, project=project or None, detail={"rows": len(rows)})
        self.write_json({"arrivals": rows})


def _arrivals(path: str, project: str, limit: int) -> list[dict[str, Any]]:
    if not path or not os.path.exists(path):
        return []  # no edge on this hub, or nothing received yet
    from voxelhub_dicom.arrivals import Arrivals

    db = Arrivals(path, create=False)
    try:
        return db.list([project] if project else None, limit=limit)
    finally:
        db.close()


@web.stream_request_body
class UploadHandler(BaseHandler):
    """A curator's zip, streamed to the service's private upload folder, then ingested in the
    background (:mod:`voxelhub_data.uploads`); 202 with the id ``GET api/uploads/<id>`` reads."""

    upload: Upload | None = None

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        if self._finished:
            return
        action = "upload.create"
        if self.request.method != "POST":
            self.deny(action, "uploads are sent with POST", status=405)
        project = unquote(self.path_args[0])
        self.require(project, Role.CURATOR, action)
        size = int(self.request.headers.get("Content-Length") or 0)
        limit = self.service.upload_max_bytes
        if size > limit:
            self.deny(action, f"the zip is {size} bytes; uploads may be {limit}", status=413,
                      project=project)  # fmt: skip
        self.request.connection.set_max_body_size(limit)
        self.upload, path = self.service.uploads.new(project, self.caller.name)
        self.file = open(path, "wb")  # noqa: SIM115 - written chunk by chunk as the body comes

    def data_received(self, chunk: bytes) -> None:
        self.file.write(chunk)
        assert self.upload is not None
        self.upload.nbytes += len(chunk)

    async def post(self, raw: str) -> None:
        action = "upload.create"
        upload = self.upload
        assert upload is not None
        self.file.close()
        zip_path = os.path.join(self.service.uploads.directory, upload.id, "upload.zip")
        try:
            await self.run(self.service.uploads.check, zip_path)
        except UploadRefused as exc:
            self.service.uploads.discard(upload)
            self.deny(action, str(exc), status=400, project=upload.project, nbytes=upload.nbytes,
                      detail={"kind": type(exc).__name__})  # fmt: skip
        upload.names_withheld = await self.run(_deidentifies, self.service.catalog, upload.project)
        self.service.uploads.register(upload)
        self.allow(
            action, project=upload.project, nbytes=upload.nbytes, detail={"upload": upload.id}
        )
        loop = IOLoop.current()
        service = self.service
        caller = self.caller

        def finished() -> None:  # on the IOLoop: the audit trail is written from there
            service.audit.decision(
                user=caller.name, client=caller.client, source=caller.source,
                action="upload.ingest", decision="allow" if upload.volumes else "deny",
                reason=upload.message[:500], project=upload.project, nbytes=upload.nbytes,
                count=upload.files, detail={"upload": upload.id, "state": upload.state.value,
                "volumes": upload.volumes, "rejected": len(upload.rejected)},
            )  # fmt: skip

        def work() -> None:
            try:
                service.uploads.run(upload, service.ingest_upload)
            finally:
                loop.add_callback(finished)

        service.upload_pool.submit(work)
        self.write_json(upload.to_json(), status=202)

    def on_connection_close(self) -> None:
        if self.upload is not None and self.service.uploads.get(self.upload.id) is None:
            self.file.close()
            self.service.uploads.discard(self.upload)


def _deidentifies(catalog: CatalogView, project: str) -> bool:
    """Whether ``project`` is de-identified (a project not yet in the catalog is not)."""
    try:
        return catalog.project_settings(project).deidentify
    except NotInCatalog:
        return False


class StowHandler(BaseHandler):
    """STOW-RS into a project (curators): the instances of a ``multipart/related`` body are
    checked and ingested like an upload's, and the answer lists each one stored or failed."""

    async def post(self, raw: str) -> None:
        action = "upload.create"
        project = unquote(raw)
        self.require(project, Role.CURATOR, action, detail={"via": "stow-rs"})
        service, body = self.service, bytes(self.request.body)
        if len(body) > service.upload_max_bytes:
            self.deny(action, f"the request is {len(body)} bytes; uploads may be "
                      f"{service.upload_max_bytes}", status=413, project=project)  # fmt: skip
        try:
            parts = split_related(body, self.request.headers.get("Content-Type", ""))
            if len(parts) > service.upload_max_files:
                raise UploadRefused(
                    f"{len(parts)} instances; an upload may hold {service.upload_max_files}"
                )
        except UploadRefused as exc:
            self.deny(action, str(exc), status=400, project=project, detail={"via": "stow-rs"})
        upload, _ = service.uploads.new(project, self.caller.name)
        upload.nbytes = len(body)
        service.uploads.register(upload)
        detail = {"upload": upload.id, "via": "stow-rs"}
        self.allow(action, project=project, nbytes=len(body), detail=detail)
        await asyncio.wrap_future(
            service.upload_pool.submit(service.uploads.run, upload, service.ingest_upload, parts)
        )
        self.service.audit.decision(
            user=self.caller.name, client=self.caller.client, source=self.caller.source,
            action="upload.ingest", decision="allow" if upload.volumes else "deny",
            reason=upload.message[:500], project=project, nbytes=upload.nbytes,
            count=upload.files, detail={**detail, "state": upload.state.value,
            "volumes": upload.volumes, "rejected": len(upload.rejected)},
        )  # fmt: skip
        status, answer = await self.run(stow_response, upload, parts)
        self.set_status(status)
        self.set_header("Content-Type", "application/dicom+json")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-VoxelHub-Upload", upload.id)
        self.finish(json.dumps(answer))


class UploadStatusHandler(BaseHandler):
    """An upload's state and report: its uploader, curators of its project, hub admins."""

    def get(self, upload_id: str) -> None:
        action = "upload.read"
        upload = self.service.uploads.get(upload_id[:64])
        if upload is None:
            self.deny(action, f"no upload {upload_id[:64]!r}", status=404)
        if upload.user != self.caller.name and not self.caller.admin:
            self.require(upload.project, Role.CURATOR, action, detail={"upload": upload.id})
        self.allow(action, project=upload.project, detail={"upload": upload.id})
        self.write_json(upload.to_json())


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, frozenset | set | tuple):
        return sorted(value) if isinstance(value, frozenset | set) else list(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def main(argv: list[str] | None = None) -> None:
    app = DataService()
    app.initialize(argv)
    app.start()
