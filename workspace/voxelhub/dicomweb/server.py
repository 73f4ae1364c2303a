"""A DICOMweb server as VoxelHub talks to it: credentials, one client per thread, errors named.

``dicomweb-client`` does the protocol (QIDO-RS, WADO-RS, STOW-RS); this module adds the
credentials (options or environment, never shown), retries on dropped keep-alive connections,
and turns ``requests``' exceptions into :mod:`voxelhub.dicomweb.errors`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from voxelhub.dicomweb.errors import (
    AuthenticationFailed,
    ServerError,
    ServerNotFound,
    ServerUnreachable,
)

if TYPE_CHECKING:
    import requests
    from dicomweb_client import DICOMwebClient

USER_ENV = "VOXELHUB_DICOMWEB_USER"
PASSWORD_ENV = "VOXELHUB_DICOMWEB_PASSWORD"
TOKEN_ENV = "VOXELHUB_DICOMWEB_TOKEN"


@dataclass(frozen=True)
class Credentials:
    """Basic auth (user + password) or a bearer token; ``repr`` never shows the secrets."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @classmethod
    def resolve(
        cls, user: str | None = None, password: str | None = None, token: str | None = None
    ) -> Credentials:
        """Given values first, then ``$VOXELHUB_DICOMWEB_USER/_PASSWORD/_TOKEN``."""
        return cls(
            user=user or os.environ.get(USER_ENV) or None,
            password=password or os.environ.get(PASSWORD_ENV) or None,
            token=token or os.environ.get(TOKEN_ENV) or None,
        )

    def session(self) -> requests.Session:
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        session = requests.Session()
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        elif self.user:
            session.auth = (self.user, self.password or "")
        # servers close idle keep-alive connections: a request on one is sent again; no retry
        # on a refused connection (an unreachable server is told at once)
        retry = Retry(total=3, connect=0, read=2, backoff_factor=0.2, allowed_methods=None)
        for scheme in ("http://", "https://"):
            session.mount(scheme, HTTPAdapter(max_retries=retry))
        return session


def redact(url: str) -> str:
    """``url`` without a ``user:password@`` part, for messages and state files."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


class Server:
    """One DICOMweb root; :meth:`client` gives each thread its own HTTP session."""

    def __init__(self, url: str, credentials: Credentials | None = None, timeout: float = 60):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerNotFound(f"not an http(s) URL of a DICOMweb server: {redact(url)!r}")
        credentials = credentials or Credentials.resolve()
        if parts.username and not credentials.user and not credentials.token:
            credentials = Credentials(parts.username, parts.password)
        self.url = redact(url).rstrip("/")
        self.credentials = credentials
        self.timeout = timeout
        self._local = threading.local()

    def client(self) -> DICOMwebClient:
        client = getattr(self._local, "client", None)
        if client is None:
            from dicomweb_client import DICOMwebClient

            client = DICOMwebClient(
                self.url, session=self.credentials.session(), timeout=self.timeout
            )
            client.set_http_retry_params(retry=False)
            self._local.client = client
        return client

    @contextmanager
    def speaking(self, what: str) -> Iterator[None]:
        """Translate the HTTP failures of ``what`` (e.g. 'QIDO-RS search') into PullErrors."""
        import requests

        try:
            yield
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            reason = exc.response.reason if exc.response is not None else ""
            if code in (401, 403):
                raise AuthenticationFailed(
                    f"{what} on {self.url}: HTTP {code}: the server refused the credentials "
                    f"(give --user and ${PASSWORD_ENV}, or ${TOKEN_ENV})"
                ) from None
            if code == 404:
                raise ServerNotFound(
                    f"{what} on {self.url}: HTTP 404: not found (is this the DICOMweb root, "
                    "e.g. http://host:8042/dicom-web?)"
                ) from None
            raise ServerError(f"{what} on {self.url}: HTTP {code}: {reason}") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ServerUnreachable(
                f"{what}: no answer from {self.url} ({type(exc).__name__}): check the host, "
                "port and network"
            ) from None
        except requests.RequestException as exc:  # a body cut off, JSON that is not JSON…
            raise ServerError(f"{what} on {self.url}: {type(exc).__name__}: {exc}") from None
