"""NativeAuthenticator (sign-up + admin approval), fixed for JupyterHub 6 and hardened.

``c.JupyterHub.authenticator_class = "voxelhub_hub.native_auth.VoxelHubNativeAuthenticator"``;
NativeAuthenticator's settings stay under ``c.NativeAuthenticator``, ours are under
``c.VoxelHubNativeAuthenticator``.

JupyterHub 6: jupyterhub-nativeauthenticator 1.3.0 (its latest release) breaks at login:

- its ``LoginHandler.post`` times the login with ``self.statsd``, which JupyterHub 6 removed
  (``AttributeError: 'LoginHandler' object has no attribute 'statsd'`` -> 500);
- its ``LoginHandler._render`` takes no ``**kwargs``/``sync``, which JupyterHub 6 passes when it
  renders an error on the login form (``TypeError ... unexpected keyword argument 'sync'``).

Admin actions only by POST with the XSRF token: upstream approves (``/hub/authorize/<user>``, a
toggle) and deletes (``/hub/discard/<user>``) an account on a plain GET, so any page the admin
visits could do it with an ``<img src>``.  Here a GET on those URLs changes nothing and shows a
confirmation page whose button POSTs; JupyterHub refuses a cookie-authenticated POST without the
session's ``_xsrf`` token (403).  The approval POST names the state it wants (``action=authorize``
or ``unauthorize``), so a replayed request cannot flip it back.  The authorization area
(``templates/authorization-area.html``, put before NativeAuthenticator's own in the template
search path) has buttons in POST forms carrying the token.  The other state-changing URLs of
NativeAuthenticator were already POST-only (sign-up, change password) or carry their own secret
(``/hub/confirm/<signed slug>``, the e-mail self-approval, off unless
``allow_self_approval_for`` is set).

Throttling by source, not by account: upstream's lockout (``allowed_failed_logins``) blocks an
account after N wrong passwords from anywhere, so anyone can lock the admin out by typing five
wrong passwords.  Here that lockout is off whatever the configuration says; instead a *source*
(the client address as configurable-http-proxy saw it) that failed
``failed_logins_per_source`` times within ``failed_login_window`` seconds is refused (HTTP 429,
with ``Retry-After``) until its oldest failure leaves the window, while every other source still
logs in to the same account.
"""

from __future__ import annotations

import ipaddress
import math
import os
import time
from collections import deque
from typing import Any

import bcrypt
from jinja2 import ChoiceLoader, FileSystemLoader
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator import handlers as native
from nativeauthenticator.orm import UserInfo
from tornado import web
from tornado.escape import url_escape
from tornado.httputil import url_concat
from traitlets import Integer

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


class _Timer:
    def start(self) -> _Timer:
        return self

    def stop(self, send: bool = True) -> None:
        return None


class _NoStatsd:
    """Stands in for the statsd client JupyterHub 6 no longer has."""

    def timer(self, name: str) -> _Timer:
        return _Timer()


class _OurTemplatesFirst(native.LocalBase):
    """Puts :data:`TEMPLATE_DIR` first in the hub's template search path (once per process), so
    our pages replace NativeAuthenticator's whatever ``c.JupyterHub.template_paths`` says."""

    _voxelhub_templates_registered = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not _OurTemplatesFirst._voxelhub_templates_registered:
            env = self.settings["jinja2_env"]
            env.loader = ChoiceLoader([FileSystemLoader([TEMPLATE_DIR]), env.loader])
            _OurTemplatesFirst._voxelhub_templates_registered = True


def client_source(request: Any) -> str:
    """The address a login attempt came from, as the hub can trust it.

    Behind configurable-http-proxy the hub's peer is the proxy (loopback) and the client is the
    last ``X-Forwarded-For`` entry, the one the proxy appended (entries before it are whatever
    the client sent), skipping proxies listed in ``c.JupyterHub.trusted_downstream_ips``.
    ``X-Real-Ip``, which tornado would prefer, is ignored: the proxy passes it through unchanged,
    so a client could name any address there.  A peer that is not loopback is the client
    itself.  IPv6 clients count by their /64 (one host usually holds the whole prefix).
    """
    context = getattr(getattr(request, "connection", None), "context", None)
    address = getattr(context, "address", None)
    peer = str(address[0]) if isinstance(address, tuple) and address else request.remote_ip
    source = peer
    if _is_loopback(peer):
        trusted = set(getattr(context, "trusted_downstream", ()) or ())
        for entry in reversed(request.headers.get("X-Forwarded-For", "").split(",")):
            entry = entry.strip()
            if entry and entry not in trusted:
                source = entry
                break
    try:
        ip = ipaddress.ip_address(source)
    except ValueError:
        return peer
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class LoginHandler(native.LoginHandler):
    statsd = _NoStatsd()

    def _render(
        self, login_error: Any = None, username: Any = None, sync: bool = False, **kwargs: Any
    ) -> Any:
        return self.render_template(
            "native-login.html",
            sync=sync,
            next=url_escape(self.get_argument("next", default="")),
            username=username,
            login_error=login_error,
            custom_html=self.authenticator.custom_html,
            login_url=self.settings["login_url"],
            enable_signup=self.authenticator.enable_signup,
            two_factor_auth=self.authenticator.allow_2fa,
            authenticator_login_url=url_concat(
                self.authenticator.login_url(self.hub.base_url),
                {"next": self.get_argument("next", "")},
            ),
        )

    async def post(self) -> None:
        data = {
            arg: self.get_argument(arg, strip=arg == "username")
            for arg in self.request.body_arguments
            if arg != "_xsrf"
        }
        data.setdefault("username", "")
        data.setdefault("password", "")
        user = await self.login_user(data)
        if user:
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
            return
        username = data["username"]
        wait = getattr(self, "_voxelhub_throttled", None)
        if wait is not None:
            # refused before the password was looked at: say so, and nothing about the account
            minutes = max(1, math.ceil(wait / 60))
            self.set_status(429)
            self.set_header("Retry-After", str(math.ceil(wait)))
            error = (
                f"Too many failed logins from your address: try again in {minutes} "
                f"minute{'s' if minutes > 1 else ''}."
            )
        else:
            self.set_status(403)
            error = "Invalid username or password."
            info = self.authenticator.get_user(username)
            # only a correct password learns that the account awaits approval
            if (
                info is not None
                and not info.is_authorized
                and info.is_valid_password(data["password"])
            ):
                error = f"User {username} has not been authorized by an administrator yet."
        self.finish(await self._render(login_error=error, username=username))


class AuthorizationAreaHandler(_OurTemplatesFirst, native.AuthorizationAreaHandler):
    """``GET /hub/authorize``: the list, with approve/revoke/discard buttons in POST forms."""


class ToggleAuthorizationHandler(_OurTemplatesFirst):
    """``/hub/authorize/<user>``: GET confirms, POST (with ``_xsrf``) approves or revokes."""

    @native.admin_users_scope
    async def get(self, user_name: str) -> None:
        info = _user_info(self, user_name)
        action = "unauthorize" if info.is_authorized else "authorize"
        html = await self.render_template(
            "voxelhub-confirm-admin-action.html",
            title=f"{'Revoke' if info.is_authorized else 'Approve'} {user_name}?",
            message=(
                f"{user_name} is {'approved' if info.is_authorized else 'not approved yet'}. "
                "Nothing changes until you press the button."
            ),
            post_url=f"{self.hub.base_url}authorize/{url_escape(user_name, plus=False)}",
            action=action,
            button="Revoke approval" if info.is_authorized else "Approve",
        )
        self.finish(html)

    @native.admin_users_scope
    async def post(self, user_name: str) -> None:
        action = self.get_body_argument("action", "")
        if action not in ("authorize", "unauthorize"):
            raise web.HTTPError(400, "action must be 'authorize' or 'unauthorize'")
        info = _user_info(self, user_name)
        if bool(info.is_authorized) != (action == "authorize"):
            UserInfo.change_authorization(self.db, info.username)
            self.log.info("%s: %s by %s", info.username, action, self.current_user.name)
        self.redirect(self.hub.base_url + "authorize#" + url_escape(user_name, plus=False))


class DiscardHandler(_OurTemplatesFirst):
    """``/hub/discard/<user>``: GET confirms, POST (with ``_xsrf``) deletes a sign-up that was
    never approved (approved accounts cannot be discarded, as upstream)."""

    @native.admin_users_scope
    async def get(self, user_name: str) -> None:
        info = _user_info(self, user_name)
        if info.is_authorized:
            raise web.HTTPError(409, f"{user_name} is approved: revoke the approval first")
        html = await self.render_template(
            "voxelhub-confirm-admin-action.html",
            title=f"Discard the sign-up of {user_name}?",
            message=f"This deletes the account {user_name}. Nothing changes until you press "
            "the button.",
            post_url=f"{self.hub.base_url}discard/{url_escape(user_name, plus=False)}",
            action="discard",
            button="Discard",
        )
        self.finish(html)

    @native.admin_users_scope
    async def post(self, user_name: str) -> None:
        info = _user_info(self, user_name)
        if info.is_authorized:
            raise web.HTTPError(409, f"{user_name} is approved: revoke the approval first")
        self.authenticator.delete_user(type("User", (), {"name": info.username}))
        if self.users.get(info.username) is not None:
            self.users.delete(info.username)
        self.log.info("%s: sign-up discarded by %s", info.username, self.current_user.name)
        self.redirect(self.hub.base_url + "authorize")


def _user_info(handler: Any, user_name: str) -> Any:
    info = handler.authenticator.get_user(user_name)
    if info is None:
        raise web.HTTPError(404, f"no sign-up named {user_name}")
    return info


_HANDLERS = {
    r"/login": LoginHandler,
    r"/authorize": AuthorizationAreaHandler,
    r"/authorize/([^/]*)": ToggleAuthorizationHandler,
    r"/discard/([^/]*)": DiscardHandler,
}


class VoxelHubNativeAuthenticator(NativeAuthenticator):
    """NativeAuthenticator with a JupyterHub-6 login, POST-only admin actions and per-source
    login throttling instead of per-account lockout (see the module's docstring)."""

    failed_logins_per_source = Integer(
        5,
        min=1,
        config=True,
        help="""Failed logins one source (client address; an IPv6 /64) may make within
        failed_login_window seconds.  After that many, logins from that source are refused
        (HTTP 429) until the oldest failure is older than the window; other sources are not
        affected, whichever account they log in to.  A failure is a wrong password or 2FA code,
        or an unknown user name.""",
    )
    failed_login_window = Integer(
        600,
        min=1,
        config=True,
        help="""Seconds a failed login counts against its source (see
        failed_logins_per_source).""",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._failures: dict[str, deque[float]] = {}
        if self.allowed_failed_logins:
            self.log.warning(
                "NativeAuthenticator.allowed_failed_logins=%s is ignored: a lockout per account "
                "lets anyone lock the admin out; logins are throttled per source instead "
                "(VoxelHubNativeAuthenticator.failed_logins_per_source)",
                self.allowed_failed_logins,
            )

    _dummy: bytes | None = None

    @classmethod
    def _dummy_hash(cls) -> bytes:
        if cls._dummy is None:
            cls._dummy = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt())
        return cls._dummy

    # upstream's per-account lockout, disabled
    def is_blocked(self, username: str) -> bool:
        return False

    def add_login_attempt(self, username: str) -> None:
        return None

    def _recent_failures(self, source: str, now: float) -> deque[float]:
        failures = self._failures.get(source)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.failed_login_window:
            failures.popleft()
        if not failures:
            del self._failures[source]
        return failures

    def throttled_for(self, source: str) -> float | None:
        """Seconds ``source`` must still wait before it may try to log in, or None."""
        now = time.monotonic()
        failures = self._recent_failures(source, now)
        if len(failures) < self.failed_logins_per_source:
            return None
        oldest_counted = failures[-self.failed_logins_per_source]
        return max(0.0, oldest_counted + self.failed_login_window - now)

    def record_failure(self, source: str) -> None:
        now = time.monotonic()
        if len(self._failures) > 100_000:  # bounded memory under a spray of addresses
            for known in list(self._failures):
                self._recent_failures(known, now)
        failures = self._failures.setdefault(source, deque())
        failures.append(now)
        while len(failures) > self.failed_logins_per_source:
            failures.popleft()

    async def authenticate(self, handler: Any, data: dict[str, Any]) -> str | None:
        source = client_source(handler.request) if handler is not None else "unknown"
        wait = self.throttled_for(source)
        if wait is not None:
            if handler is not None:
                handler._voxelhub_throttled = wait
            self.log.warning(
                "login refused: %s failed %s times within %s s",
                source,
                self.failed_logins_per_source,
                self.failed_login_window,
            )
            return None
        username = self.normalize_username(data.get("username", ""))
        info = self.get_user(username)
        if info is None:
            # as slow as a wrong password, so the time taken does not tell which names exist
            bcrypt.checkpw(str(data.get("password", "")).encode(), self._dummy_hash())
            self.record_failure(source)
            return None
        secrets_ok = info.is_valid_password(data.get("password", ""))
        if secrets_ok and info.has_2fa:
            secrets_ok = info.is_valid_token(data.get("2fa"))
        if not secrets_ok:
            self.record_failure(source)
            return None
        if not info.is_authorized:
            return None  # right password, awaiting approval: not a guess
        return str(username)

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [(path, _HANDLERS.get(path, h)) for path, h in super().get_handlers(app)]
