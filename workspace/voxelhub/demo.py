"""``make demo``: ingest the sample DICOM into a local store and start JupyterLab on 127.0.0.1.

This is the single-user shape; the multi-user hub grows from it.  Ctrl-C stops JupyterLab.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", required=True, help="the shared/ folder with data/dicom")
    parser.add_argument("--state", required=True, help="folder for the demo store and notebooks")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--no-lab", action="store_true", help="ingest only")
    args = parser.parse_args(argv)

    from voxelhub import ingest

    state = Path(args.state).resolve()
    store = state / "store"
    notebooks = state / "notebooks"
    notebooks.mkdir(parents=True, exist_ok=True)
    os.environ["VOXELHUB_STORE"] = str(store)
    os.environ.setdefault("VOXELHUB_SECRETS_DIR", str(state / "secrets"))
    report = ingest(Path(args.shared) / "data" / "dicom", store, project="demo")
    print(report.summary())
    for nb in sorted((REPO / "sample_notebooks").glob("*.ipynb")):
        shutil.copy(nb, notebooks / nb.name)
    if args.no_lab:
        return 0
    token = secrets.token_urlsafe(24)
    print(f"\nJupyterLab: http://127.0.0.1:{args.port}/lab?token={token}\n(Ctrl-C to stop)")
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={args.port}",
        f"--ServerApp.root_dir={notebooks}",
        f"--IdentityProvider.token={token}",
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
