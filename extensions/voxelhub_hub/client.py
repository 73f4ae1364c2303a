"""Drive the hub over HTTP the way a person with a browser does (tests, demo, benchmarks).

:class:`HubBrowser` keeps cookies like a browser: sign up, log in through the form, approve
accounts as an admin (NativeAuthenticator's ``/hub/authorize``), call the hub's REST API with the
login cookie plus the ``X-XSRFToken`` header the hub requires, wait for one's server, and make an
API token.  :func:`run_code` runs code in a new kernel of a user's server through the Jupyter
Server REST API and its websocket, and returns what it printed.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import requests
import websocket


class HubError(RuntimeError):
    """The hub answered something a person would read as a failure."""


class HubBrowser:
    """A cookie-keeping HTTP session against one hub (``url`` = the public proxy URL)."""

    def __init__(self, url: str, verify: str | bool = True) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        # REQUESTS_CA_BUNDLE in the environment would silently override session.verify
        self.session.trust_env = False
        self.session.verify = verify
        self.name: str | None = None

    def _xsrf(self) -> str:
        if not self.session.cookies.get("_xsrf"):
            self.session.get(self.url + "/hub/login", timeout=30)
        return self.session.cookies.get("_xsrf") or ""

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

    def login(self, username: str, password: str) -> requests.Response:
        """Log in through the form; raise :class:`HubError` with the page's message on failure.

        A successful login redirects to ``/hub/spawn``, which starts the user's default server.
        """
        self.session.get(self.url + "/hub/login", timeout=30)
        r = self._form("/hub/login", {"username": username, "password": password})
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

    def approve(self, username: str) -> None:
        """As an admin: authorize a signed-up account (NativeAuthenticator toggles it)."""
        page = self.session.get(self.url + "/hub/authorize", timeout=30)
        if page.status_code != 200:
            raise HubError(f"/hub/authorize: {page.status_code} (not logged in as an admin?)")
        r = self.session.get(self.url + f"/hub/authorize/{username}", timeout=30)
        if r.status_code != 200:
            raise HubError(f"approving {username!r}: {r.status_code}")

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


def _alert(html: str) -> str:
    m = re.search(r'<div class="alert[^"]*"[^>]*>(.*?)</div>', html, re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", m.group(1))).strip() if m else ""


def run_code(
    url: str, user: str, token: str, code: str, *, cafile: str | None = None, timeout: float = 240
) -> str:
    """Run ``code`` in a new kernel of ``user``'s server; return its stdout.

    Raises :class:`HubError` with the traceback (colour codes stripped) if the code failed or
    wrote to stderr, and :class:`TimeoutError` if it did not finish in ``timeout`` seconds.
    The kernel is shut down afterwards in every case.
    """
    base = f"{url.rstrip('/')}/user/{user}/api"
    headers = {"Authorization": f"token {token}"}
    verify: str | bool = cafile or True
    r = requests.post(
        base + "/kernels", headers=headers, json={"name": "python3"}, verify=verify, timeout=120
    )
    if r.status_code != 201:
        raise HubError(f"starting a kernel for {user}: {r.status_code} {r.text[:300]}")
    kernel = r.json()["id"]
    ws_url = base.replace("http", "ws", 1) + f"/kernels/{kernel}/channels"
    msg_id = uuid.uuid4().hex
    out: list[str] = []
    err: list[str] = []
    finished = False
    try:
        ws = websocket.create_connection(
            ws_url,
            header=[f"Authorization: token {token}"],
            timeout=timeout,
            sslopt={"ca_certs": cafile} if cafile else None,
        )
        try:
            ws.send(json.dumps(_execute_request(msg_id, user, code)))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                msg = json.loads(ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg["msg_type"]
                if kind == "stream":
                    (out if msg["content"]["name"] == "stdout" else err).append(
                        msg["content"]["text"]
                    )
                elif kind == "error":
                    tb = "\n".join(msg["content"]["traceback"])
                    err.append(re.sub(r"\x1b\[[0-9;]*m", "", tb))
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    finished = True
                    break
        finally:
            ws.close()
    finally:
        requests.delete(base + f"/kernels/{kernel}", headers=headers, verify=verify, timeout=60)
    if not finished:
        raise TimeoutError(
            f"code in {user}'s kernel did not finish in {timeout:.0f} s; output: {''.join(out)}"
        )
    if any("Traceback" in e or "Error" in e for e in err):
        raise HubError(f"code in {user}'s kernel failed:\n{''.join(err)}\nstdout:\n{''.join(out)}")
    return "".join(out)


def _execute_request(msg_id: str, user: str, code: str) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": msg_id,
            "username": user,
            "session": uuid.uuid4().hex,
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
