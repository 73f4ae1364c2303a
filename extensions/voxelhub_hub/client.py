"""Drive the hub over HTTP the way a person with a browser does (tests, demo, benchmarks).

:class:`HubBrowser` keeps cookies like a browser: sign up, log in through the form, approve
accounts as an admin (the POST forms of ``/hub/authorize``), call the hub's REST API with the
login cookie plus the ``X-XSRFToken`` header the hub requires, wait for one's server, and make an
API token.  :class:`KernelSession` drives a kernel of a user's server through the Jupyter Server
REST API and its websocket; :func:`run_code` runs one piece of code in a new kernel and
:func:`run_notebook` a whole notebook, cell after cell, the way JupyterLab would.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
import websocket


class HubError(RuntimeError):
    """The hub answered something a person would read as a failure."""


class HubBrowser:
    """A cookie-keeping HTTP session against one hub (``url`` = the public proxy URL)."""

    def __init__(self, url: str, verify: str | bool = True, *, source: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        # REQUESTS_CA_BUNDLE in the environment would silently override session.verify
        self.session.trust_env = False
        self.session.verify = verify
        if source:  # connect from this local address (e.g. 127.0.0.2: another client on loopback)
            for prefix in ("http://", "https://"):
                self.session.mount(prefix, _SourceAddressAdapter(source))
        self.name: str | None = None

    def _xsrf(self) -> str:
        # the hub's (path /hub/); a user's server sets its own on /user/<name>/
        if not self.session.cookies.get("_xsrf", path="/hub/"):
            self.session.get(self.url + "/hub/login", timeout=30)
        return self.session.cookies.get("_xsrf", path="/hub/") or ""

    def _form(self, path: str, data: dict[str, str]) -> requests.Response:
        data = {**data, "_xsrf": self._xsrf()}
        return self.session.post(self.url + path, data=data, timeout=120)

    def signup(self, username: str, password: str) -> str:
        """Sign up; return the hub's message (approval pending, or done for admins)."""
        self.session.get(self.url + "/hub/signup", timeout=30)
        r = self._form(
            "/hub/signup",
            {
                "username": username,
                "signup_password": password,
                "signup_password_confirmation": password,
            },
        )
        text = _alert(r.text)
        if r.status_code != 200 or "went wrong" in text or "Please try again" in text:
            raise HubError(f"sign-up of {username!r} failed ({r.status_code}): {text}")
        return text

    def login(self, username: str, password: str, *, next_url: str = "") -> requests.Response:
        """Log in through the form; raise :class:`HubError` with the page's message on failure.

        A successful login redirects to ``next_url`` or else to ``/hub/spawn``, which starts the
        user's default server (``next_url="/hub/home"`` logs in without starting it).
        """
        self.session.get(self.url + "/hub/login", timeout=30)
        path = "/hub/login" + (f"?next={quote(next_url, safe='')}" if next_url else "")
        r = self._form(path, {"username": username, "password": password})
        if "/hub/login" in r.url and r.request.method == "POST":
            msg = re.search(r'<p class="login_error">\s*(.*?)\s*</p>', r.text, re.S)
            raise HubError(
                f"login of {username!r} refused: {msg.group(1) if msg else r.status_code}"
            )
        self.name = username
        return r

    def api(
        self, method: str, path: str, ok: tuple[int, ...] = (200, 201, 202, 204), **kw: Any
    ) -> Any:
        """Call ``/hub/api<path>`` with the login cookie (and the XSRF header the hub wants)."""
        headers = {"X-XSRFToken": self._xsrf(), **kw.pop("headers", {})}
        r = self.session.request(
            method, self.url + "/hub/api" + path, headers=headers, timeout=60, **kw
        )
        if r.status_code not in ok:
            raise HubError(f"{method} /hub/api{path}: {r.status_code} {r.text[:300]}")
        return r.json() if r.content else None

    def admin_forms(self) -> dict[tuple[str, str], dict[str, str]]:
        """As an admin: the forms of the authorization area (``/hub/authorize``), as a browser
        sees them: ``{(action URL path, action): {field: value}}``, action being ``authorize``,
        ``unauthorize`` or ``discard``; the fields include the page's ``_xsrf`` token."""
        page = self.session.get(self.url + "/hub/authorize", timeout=30)
        if page.status_code != 200:
            raise HubError(f"/hub/authorize: {page.status_code} (not logged in as an admin?)")
        forms = {}
        for attrs, body in re.findall(r"<form([^>]*)>(.*?)</form>", page.text, re.S):
            if not re.search(r'method="post"', attrs, re.I):
                continue
            target = re.search(r'action="([^"]*)"', attrs)
            fields = {
                name: html.unescape(value)
                for name, value in re.findall(
                    r'<input type="hidden" name="([^"]+)" value="([^"]*)"\s*/?>', body
                )
            }
            if target:
                path = html.unescape(target.group(1))
                action = fields.get("action") or path.rstrip("/").split("/")[-2]
                forms[(path, action)] = fields
        return forms

    def admin_action(self, action: str, username: str) -> requests.Response:
        """As an admin: press a button of the authorization area (``authorize``,
        ``unauthorize`` or ``discard``) for ``username``: a POST with the form's XSRF token."""
        path = f"/hub/{'discard' if action == 'discard' else 'authorize'}/{quote(username)}"
        fields = self.admin_forms().get((path, action))
        if fields is None:
            raise HubError(f"no {action!r} button for {username!r} at /hub/authorize")
        r = self.session.post(self.url + path, data=fields, timeout=30)
        if r.status_code != 200 or not r.url.split("#")[0].endswith("/hub/authorize"):
            raise HubError(f"{action} {username!r}: {r.status_code} at {r.url}")
        return r

    def approve(self, username: str) -> None:
        """As an admin: authorize a signed-up account (the Authorize button of /hub/authorize)."""
        self.admin_action("authorize", username)

    def add_to_project(self, project: str, *users: str) -> None:
        """As an admin: add users to a project (hub group)."""
        self.api("POST", f"/groups/{project}/users", json={"users": list(users)})

    def wait_for_server(self, timeout: float = 180) -> float:
        """Start (if needed) and wait for this user's default server; return the seconds waited."""
        t0 = time.monotonic()
        user = self.api("GET", "/user")
        if "" not in user["servers"]:
            self.api("POST", f"/users/{self.name}/server", ok=(201, 202, 400))
        while time.monotonic() - t0 < timeout:
            server = self.api("GET", "/user")["servers"].get("")
            if server and server["ready"]:
                return time.monotonic() - t0
            if server is None and time.monotonic() - t0 > 10:
                raise HubError(f"server of {self.name} stopped while starting")
            time.sleep(0.5)
        raise TimeoutError(f"server of {self.name} not ready after {timeout:.0f} s")

    def open_lab(self) -> requests.Response:
        """GET the user's JupyterLab (the OAuth dance between hub and server happens here)."""
        r = self.session.get(self.url + f"/user/{self.name}/lab", timeout=60)
        if r.status_code != 200 or not r.url.rstrip("/").endswith("/lab"):
            raise HubError(f"JupyterLab of {self.name}: {r.status_code} at {r.url}")
        return r

    def new_token(self, note: str = "voxelhub", expires_in: int = 3600) -> str:
        """A hub API token of the logged-in user (what a person makes at /hub/token)."""
        body = {"note": note, "expires_in": expires_in}
        return str(self.api("POST", f"/users/{self.name}/tokens", json=body)["token"])


class _SourceAddressAdapter(requests.adapters.HTTPAdapter):
    """Opens connections from a given local address."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def _alert(page: str) -> str:
    m = re.search(r'<div class="alert[^"]*"[^>]*>(.*?)</div>', page, re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", m.group(1))).strip() if m else ""


class KernelSession:
    """A kernel on a user's server, driven over the Jupyter Server REST API and its websocket.

    ::

        with KernelSession(url, "alice", token, cafile=cert) as kernel:
            kernel.execute("x = 1")
            out = kernel.execute("print(x + 1)")   # "2\n"

    The kernel is started on entry and shut down on exit, whatever happened in between.
    """

    def __init__(
        self, url: str, user: str, token: str, *, cafile: str | None = None, timeout: float = 240
    ) -> None:
        self.base = f"{url.rstrip('/')}/user/{user}/api"
        self.user, self.timeout, self.cafile = user, timeout, cafile
        self.headers = {"Authorization": f"token {token}"}
        self.verify: str | bool = cafile or True
        self.kernel: str | None = None
        self.ws: Any = None
        self.session = uuid.uuid4().hex

    def __enter__(self) -> KernelSession:
        r = requests.post(
            self.base + "/kernels",
            headers=self.headers,
            json={"name": "python3"},
            verify=self.verify,
            timeout=120,
        )
        if r.status_code != 201:
            raise HubError(f"starting a kernel for {self.user}: {r.status_code} {r.text[:300]}")
        self.kernel = r.json()["id"]
        try:
            self.ws = websocket.create_connection(
                self.base.replace("http", "ws", 1) + f"/kernels/{self.kernel}/channels",
                header=[f"Authorization: {self.headers['Authorization']}"],
                timeout=self.timeout,
                sslopt={"ca_certs": self.cafile} if self.cafile else None,
            )
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        if self.kernel is not None:
            requests.delete(
                self.base + f"/kernels/{self.kernel}",
                headers=self.headers,
                verify=self.verify,
                timeout=60,
            )
            self.kernel = None

    def execute(self, code: str, *, timeout: float | None = None) -> str:
        """Run ``code``; return its stdout (and the text of displayed results).

        Raises :class:`HubError` with the traceback (colour codes stripped) if the code failed or
        wrote a traceback to stderr, and :class:`TimeoutError` if it did not finish in time.
        """
        if self.ws is None:
            raise HubError("the kernel session is not open (use it in a `with` block)")
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps(_execute_request(msg_id, self.user, code, self.session)))
        out: list[str] = []
        err: list[str] = []
        finished = False
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream":
                (out if msg["content"]["name"] == "stdout" else err).append(msg["content"]["text"])
            elif kind in ("execute_result", "display_data"):
                out.append(str(msg["content"]["data"].get("text/plain", "")) + "\n")
            elif kind == "error":
                tb = "\n".join(msg["content"]["traceback"])
                err.append(re.sub(r"\x1b\[[0-9;]*m", "", tb))
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                finished = True
                break
        if not finished:
            raise TimeoutError(
                f"code in {self.user}'s kernel did not finish in {timeout or self.timeout:.0f} s; "
                f"output: {''.join(out)}"
            )
        if any("Traceback" in e or "Error" in e for e in err):
            raise HubError(
                f"code in {self.user}'s kernel failed:\n{''.join(err)}\nstdout:\n{''.join(out)}"
            )
        return "".join(out)


def run_code(
    url: str, user: str, token: str, code: str, *, cafile: str | None = None, timeout: float = 240
) -> str:
    """Run ``code`` in a new kernel of ``user``'s server; return its stdout.

    See :meth:`KernelSession.execute` for the errors; the kernel is shut down afterwards.
    """
    with KernelSession(url, user, token, cafile=cafile, timeout=timeout) as kernel:
        return kernel.execute(code)


def run_notebook(
    url: str,
    user: str,
    token: str,
    notebook: str | os.PathLike[str],
    *,
    parameters: dict[str, Any] | None = None,
    cafile: str | None = None,
    timeout: float = 240,
) -> list[str]:
    """Execute a notebook's code cells, in order, in one new kernel of ``user``'s server.

    ``parameters`` are injected after the cell tagged ``parameters`` (as papermill does).
    Returns each code cell's output; a failing cell raises :class:`HubError` naming the cell.
    """
    cells = json.loads(Path(notebook).read_text())["cells"]
    outputs: list[str] = []
    with KernelSession(url, user, token, cafile=cafile, timeout=timeout) as kernel:
        for i, cell in enumerate(cells):
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            if "parameters" in cell.get("metadata", {}).get("tags", []) and parameters:
                source += "\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
            try:
                outputs.append(kernel.execute(source))
            except HubError as exc:
                raise HubError(f"{Path(notebook).name}, cell {i}:\n{source}\n---\n{exc}") from None
    return outputs


def _execute_request(msg_id: str, user: str, code: str, session: str) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": msg_id,
            "username": user,
            "session": session,
            "msg_type": "execute_request",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "channel": "shell",
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
    }
