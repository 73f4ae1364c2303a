"""NativeAuthenticator (sign-up + admin approval) made to work on JupyterHub 6.

jupyterhub-nativeauthenticator 1.3.0 (its latest release) breaks on JupyterHub 6.1 at login:

- its ``LoginHandler.post`` times the login with ``self.statsd``, which JupyterHub 6 removed
  (``AttributeError: 'LoginHandler' object has no attribute 'statsd'`` -> 500);
- its ``LoginHandler._render`` takes no ``**kwargs``/``sync``, which JupyterHub 6 passes when it
  renders an error on the login form (``TypeError ... unexpected keyword argument 'sync'``).

:class:`VoxelHubNativeAuthenticator` serves a login handler with both fixed and is otherwise
NativeAuthenticator unchanged (``c.JupyterHub.authenticator_class =
"voxelhub_hub.native_auth.VoxelHubNativeAuthenticator"``; its settings stay under
``c.NativeAuthenticator``).  Drop it when an upstream release supports JupyterHub 6.
"""

from __future__ import annotations

from typing import Any

from nativeauthenticator import NativeAuthenticator
from nativeauthenticator import handlers as native
from tornado.escape import url_escape
from tornado.httputil import url_concat


class _Timer:
    def start(self) -> _Timer:
        return self

    def stop(self, send: bool = True) -> None:
        return None


class _NoStatsd:
    """Stands in for the statsd client JupyterHub 6 no longer has."""

    def timer(self, name: str) -> _Timer:
        return _Timer()


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


class VoxelHubNativeAuthenticator(NativeAuthenticator):
    """NativeAuthenticator with a JupyterHub-6-compatible login handler."""

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [
            (path, LoginHandler if path == r"/login" else h)
            for path, h in super().get_handlers(app)
        ]
