"""A self-signed certificate for the hub's public port, made once (``make hub-demo`` first run).

Usage::

    python -m voxelhub_hub.tls STATE_DIR [--host 127.0.0.1] [--days 365]

writes ``STATE_DIR/tls/hub.crt`` and ``STATE_DIR/tls/hub.key`` (0600) unless both exist, and
prints their paths.  For a real deployment put a CA-issued certificate (e.g. Let's Encrypt) at
the paths given by ``$VOXELHUB_HUB_SSL_CERT`` / ``$VOXELHUB_HUB_SSL_KEY`` instead; see
``hub_config/jupyterhub_config.py``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
from pathlib import Path


def ensure_self_signed(state: Path, host: str = "127.0.0.1", days: int = 365) -> tuple[Path, Path]:
    """Create ``tls/hub.crt`` + ``tls/hub.key`` under ``state`` if missing; return both paths."""
    folder = state / "tls"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = folder / "hub.crt", folder / "hub.key"
    if cert.exists() and key.exists():
        return cert, key
    try:
        ipaddress.ip_address(host)
        san = f"IP:{host}"
    except ValueError:
        san = f"DNS:{host}"
    if host in ("127.0.0.1", "localhost"):
        san = "IP:127.0.0.1,DNS:localhost"
    tmp_key = folder / "hub.key.tmp"
    tmp_key.unlink(missing_ok=True)
    # the key file exists with 0600 before openssl writes a byte into it
    os.close(os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            str(days),
            "-subj",
            f"/CN={host}",
            "-addext",
            f"subjectAltName={san}",
            "-keyout",
            str(tmp_key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    os.chmod(tmp_key, 0o600)
    tmp_key.rename(key)
    return cert, key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("state", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)
    cert, key = ensure_self_signed(args.state, args.host, args.days)
    print(cert)
    print(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
