"""Issue 9, items 9 and 10 (part): admin actions, cookies and login throttling, attacked on the
real hub stack (HTTPS through configurable-http-proxy, system spawner).

- An attacker's page makes the admin's browser GET ``/hub/authorize/<user>`` and
  ``/hub/discard/<user>`` (an ``<img>``, a link): nothing changes.
- It makes the browser POST there (an auto-submitted form) without the admin's XSRF token, or
  with the attacker's own: refused, nothing changes.  An ordinary user cannot do it either.
- The admin's own buttons (POST forms with the token) still approve, revoke and discard.
- Hub cookies and the user server's cookie carry ``SameSite=Lax`` and ``Secure`` (TLS).
- Six wrong passwords from one client address (127.0.0.2) throttle that address, whatever
  ``X-Forwarded-For``/``X-Real-Ip`` it sends, while the admin still logs in from another one.

Needs root (the spawned user is a unix account); leaves no process and no account behind.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from tests.accounts import group_exists, user_exists
from tests.dicom_factory import write_series

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "extensions"))

from voxelhub_hub.client import HubBrowser, HubError  # noqa: E402
from voxelhub_hub.native_auth import VoxelHubNativeAuthenticator  # noqa: E402
from voxelhub_hub.stack import HubStack  # noqa: E402
from voxelhub_hub.system_users import (  # noqa: E402
    MANAGED_GROUP,
    remove_account,
    remove_managed_group_if_unused,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Use setlocale:DeprecationWarning"),  # nativeauthenticator
    pytest.mark.timeout(600),
    pytest.mark.skipif(os.geteuid() != 0, reason="the system spawner needs root"),
]

S = secrets.token_hex(3)
ADMIN = f"vxadm{S}"  # hub admin (approved on sign-up)
ATTACKER = f"vxatk{S}"  # an approved, ordinary user
PENDING = f"vxpen{S}"  # signed up, waiting for approval: the CSRF target
APPROVED = f"vxapp{S}"  # approved; also starts a server (its cookie)
CYCLE = f"vxcyc{S}"  # approved, revoked, approved again through the admin's buttons
DISCARDED = f"vxdis{S}"  # discarded through the admin's button
USERS = (ADMIN, ATTACKER, PENDING, APPROVED, CYCLE, DISCARDED)
DATA_ACCOUNT = f"vxdata{S}"  # the data service's account (the hub config needs a store)
EVIL = "https://evil.example"
# what a browser sends when a page on another site loads an image / follows a link to the hub
CROSS_SITE_IMG = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Referer": EVIL}
CROSS_SITE_NAV = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Referer": EVIL}
CROSS_SITE_FORM = {**CROSS_SITE_NAV, "Origin": EVIL}


class Site:
    def __init__(self, stack: HubStack) -> None:
        self.stack = stack
        self.passwords = {name: secrets.token_urlsafe(15) for name in USERS}
        self.admin: HubBrowser

    def browser(self, source: str | None = None) -> HubBrowser:
        return HubBrowser(self.stack.url, self.stack.verify, source=source)

    def login(self, name: str, source: str | None = None) -> HubBrowser:
        b = self.browser(source)
        b.login(name, self.passwords[name], next_url="/hub/home")
        return b

    def state_of(self, name: str) -> str:
        """What the admin's authorization area says: approved, pending or absent."""
        forms = self.admin.admin_forms()
        path = f"/hub/authorize/{name}"
        if (path, "unauthorize") in forms:
            return "approved"
        if (path, "authorize") in forms:
            assert (f"/hub/discard/{name}", "discard") in forms
            return "pending"
        return "absent"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    # not pytest's tmp_path: /tmp/pytest-of-root is 0700 and the spawned unix user must reach
    # its folders below the state folder
    state = Path(tempfile.mkdtemp(prefix="vhcsrfstate-"))
    os.chmod(state, 0o755)
    group_existed = group_exists(MANAGED_GROUP)
    stack = HubStack(
        state,
        admins=[ADMIN],
        spawner="system",
        tls=True,
        extra_env={"VOXELHUB_DATA_USER": DATA_ACCOUNT},
    )
    try:
        stack.store = str(_tiny_store(state))
        stack.start(timeout=180)
        site = Site(stack)
        admin = site.browser()
        assert "successful" in admin.signup(ADMIN, site.passwords[ADMIN])
        admin.login(ADMIN, site.passwords[ADMIN], next_url="/hub/home")
        site.admin = admin
        for name in USERS[1:]:
            assert "sent to the admin" in site.browser().signup(name, site.passwords[name])
        for name in (ATTACKER, APPROVED):
            admin.approve(name)
        yield site
    finally:
        survivors = stack.stop()
        leftovers = []
        for p in psutil.process_iter(["pid", "username", "cmdline"]):
            if p.info["username"] in (*USERS, DATA_ACCOUNT):
                leftovers.append(f"{p.pid} {p.info['username']} {p.info['cmdline']}")
                p.kill()
        for name in USERS:
            remove_account(name)
        subprocess.run(["userdel", DATA_ACCOUNT], capture_output=True, check=False)
        subprocess.run(["groupdel", DATA_ACCOUNT], capture_output=True, check=False)
        if not group_existed:
            remove_managed_group_if_unused()
        shutil.rmtree(state, ignore_errors=True)
        assert not survivors, f"processes still running after the hub stopped: {survivors}"
        assert not leftovers, f"processes of test users still running: {leftovers}"
        left = [name for name in (*USERS, DATA_ACCOUNT) if user_exists(name)]
        assert not left, f"unix accounts left behind: {left}"


def _tiny_store(state: Path) -> Path:
    """A store with one small series: the hub's configuration runs the data service on it."""
    from voxelhub import ingest

    store = state / "store"
    write_series(state / "dicom", slices=2, rows=8, columns=8, seed=1, patient_id="CSRF1")
    report = ingest(state / "dicom", store, project=f"csrf{S}", progress=False)
    assert not report.failed, report.summary()
    return store


def _refused_login(site: Site, name: str, source: str | None = None) -> str:
    with pytest.raises(HubError) as err:
        site.browser(source).login(name, site.passwords[name], next_url="/hub/home")
    return str(err.value)


def test_cross_site_get_on_admin_links_changes_nothing(site: Site) -> None:
    session = site.admin.session
    for headers in (CROSS_SITE_IMG, CROSS_SITE_NAV):
        for path in (f"/hub/authorize/{PENDING}", f"/hub/discard/{PENDING}"):
            r = session.get(site.stack.url + path, headers=headers, timeout=30)
            assert r.status_code in (200, 405), (path, r.status_code)
            if r.status_code == 200:  # a confirmation page whose button POSTs
                assert re.search(r'<form method="post" action="[^"]*' + path, r.text), path
            assert site.state_of(PENDING) == "pending", f"GET {path} changed {PENDING}"
        # revoking an approved user by GET does not work either
        r = session.get(site.stack.url + f"/hub/authorize/{APPROVED}", headers=headers, timeout=30)
        assert r.status_code in (200, 405)
        assert site.state_of(APPROVED) == "approved"
    assert "not been authorized" in _refused_login(site, PENDING)
    site.login(APPROVED)  # still approved


def test_cross_site_post_without_the_admins_xsrf_token_is_refused(site: Site) -> None:
    attacker = site.login(ATTACKER)
    own_token = attacker.session.cookies.get("_xsrf", path="/hub/")
    assert own_token
    session = site.admin.session
    attempts = [
        (f"/hub/authorize/{PENDING}", {"action": "authorize"}),
        (f"/hub/discard/{PENDING}", {}),
        (f"/hub/authorize/{APPROVED}", {"action": "unauthorize"}),
    ]
    for path, form in attempts:
        for token in (None, own_token, "forged" + own_token[6:]):
            data = dict(form) if token is None else {**form, "_xsrf": token}
            r = session.post(
                site.stack.url + path,
                data=data,
                headers=CROSS_SITE_FORM,
                allow_redirects=False,
                timeout=30,
            )
            assert r.status_code == 403, (path, token is not None, r.status_code)
        # the ordinary user with a valid token of their own session is no admin
        r = attacker.session.post(
            site.stack.url + path,
            data={**form, "_xsrf": own_token},
            allow_redirects=False,
            timeout=30,
        )
        assert r.status_code == 403, (path, "non-admin", r.status_code)
    assert site.state_of(PENDING) == "pending"
    assert site.state_of(APPROVED) == "approved"
    assert "not been authorized" in _refused_login(site, PENDING)


def test_the_admins_buttons_still_work(site: Site) -> None:
    admin = site.admin
    admin.admin_action("authorize", CYCLE)
    assert site.state_of(CYCLE) == "approved"
    site.login(CYCLE)
    admin.admin_action("unauthorize", CYCLE)
    assert site.state_of(CYCLE) == "pending"
    assert "not been authorized" in _refused_login(site, CYCLE)
    admin.approve(CYCLE)
    site.login(CYCLE)
    # the confirmation page's own button works too (what the admin sees after following a link)
    page = admin.session.get(site.stack.url + f"/hub/discard/{DISCARDED}", timeout=30)
    token = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    assert page.status_code == 200 and token
    r = admin.session.post(
        site.stack.url + f"/hub/discard/{DISCARDED}", data={"_xsrf": token.group(1)}, timeout=30
    )
    assert r.status_code == 200 and r.url.split("#")[0].endswith("/hub/authorize")
    assert site.state_of(DISCARDED) == "absent"
    assert "Invalid username or password" in _refused_login(site, DISCARDED)
    # an approved account cannot be discarded, not even by the admin
    r = admin.session.get(site.stack.url + f"/hub/discard/{APPROVED}", timeout=30)
    assert r.status_code == 409


def _set_cookies(r: requests.Response) -> dict[str, str]:
    """Every cookie set by a response and the redirects before it, by name (not deletions)."""
    found = {}
    for step in (*r.history, r):
        for header in step.raw.headers.getlist("Set-Cookie"):
            name, _, rest = header.partition("=")
            value = rest.split(";", 1)[0].strip().strip('"')
            if value:  # clear_cookie sets an empty value that expired in 1970
                found[name.strip()] = header
    return found


def _assert_same_site_secure(name: str, header: str) -> None:
    attrs = {a.strip().split("=")[0].lower(): a.strip() for a in header.split(";")[1:]}
    assert attrs.get("samesite", "").lower() in ("samesite=lax", "samesite=strict"), (name, header)
    assert "secure" in attrs, (name, header)


def test_cookies_carry_same_site_and_secure(site: Site) -> None:
    b = site.browser()
    cookies = _set_cookies(b.session.get(site.stack.url + "/hub/login", timeout=30))
    assert "_xsrf" in cookies
    login = b.login(APPROVED, site.passwords[APPROVED], next_url="/hub/home")
    cookies.update(_set_cookies(login))
    for name in ("jupyterhub-hub-login", "jupyterhub-session-id", "_xsrf"):
        assert name in cookies, sorted(cookies)
    for name, header in cookies.items():
        _assert_same_site_secure(name, header)
    # the user's own server (HubOAuth, hub_config/jupyter/jupyter_server_config.json)
    b.wait_for_server(timeout=240)
    try:
        lab = b.open_lab()
        server_cookies = _set_cookies(lab)
        assert f"jupyterhub-user-{APPROVED}" in server_cookies, sorted(server_cookies)
        for name, header in server_cookies.items():
            if name.startswith("jupyterhub-user-"):
                _assert_same_site_secure(name, header)
    finally:
        b.api("DELETE", f"/users/{APPROVED}/server", ok=(202, 204))
        deadline = time.monotonic() + 60
        while b.api("GET", "/user")["servers"] and time.monotonic() < deadline:
            time.sleep(0.5)


def _login_post(b: HubBrowser, name: str, password: str, **headers: str) -> requests.Response:
    # the headers go with the form's GET too: the hub ties an anonymous XSRF token to the
    # address it sees, and a spoofed X-Real-Ip changes that (a mismatch would be a plain 403)
    b.session.get(b.url + "/hub/login", headers=headers, timeout=30)
    token = b.session.cookies.get("_xsrf", path="/hub/")
    return b.session.post(
        b.url + "/hub/login?next=%2Fhub%2Fhome",
        data={"username": name, "password": password, "_xsrf": token},
        headers=headers,
        allow_redirects=False,
        timeout=30,
    )


def test_wrong_passwords_throttle_the_source_not_the_account(site: Site) -> None:
    attacker = site.browser(source="127.0.0.2")
    limit = VoxelHubNativeAuthenticator.failed_logins_per_source.default_value
    statuses = [
        _login_post(attacker, ADMIN, f"wrong-{i}-{S}").status_code for i in range(limit + 1)
    ]
    assert statuses == [403] * limit + [429], statuses
    # the right password does not help the throttled source, nor do forwarding headers
    for headers in (
        {},
        {"X-Forwarded-For": "10.1.2.3"},
        {"X-Real-Ip": "10.9.8.7"},
        {"X-Forwarded-For": "10.1.2.3, 10.4.5.6", "X-Real-Ip": "10.9.8.7"},
    ):
        r = _login_post(attacker, ADMIN, site.passwords[ADMIN], **headers)
        assert r.status_code == 429, (headers, r.status_code, r.text[-500:])
        assert int(r.headers["Retry-After"]) > 0
        assert "Too many failed logins" in r.text
        assert "jupyterhub-hub-login" not in _set_cookies(r)
    # the admin, from another address, is not locked out
    admin = site.browser(source="127.0.0.3")
    admin.login(ADMIN, site.passwords[ADMIN], next_url="/hub/home")
    assert admin.api("GET", "/user")["admin"] is True
    site.login(ADMIN)  # and from the usual one
    # a third address still gets the plain answer for a wrong password
    r = _login_post(site.browser(source="127.0.0.4"), ADMIN, "still-wrong")
    assert r.status_code == 403 and "Invalid username or password" in r.text


def test_the_window_releases_a_source() -> None:
    """The sliding window itself, with a window of one second (the hub's is ten minutes)."""
    auth = VoxelHubNativeAuthenticator(
        add_new_table=False, failed_logins_per_source=3, failed_login_window=1
    )
    for _ in range(2):
        auth.record_failure("192.0.2.1")
    assert auth.throttled_for("192.0.2.1") is None
    auth.record_failure("192.0.2.1")
    wait = auth.throttled_for("192.0.2.1")
    assert wait is not None and 0 < wait <= 1
    assert auth.throttled_for("192.0.2.2") is None
    time.sleep(1.1)
    assert auth.throttled_for("192.0.2.1") is None
    assert not auth.is_blocked("anyone")  # upstream's per-account lockout is off
