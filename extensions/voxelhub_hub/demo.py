"""``make hub-demo``: the multi-user workspace on this machine, over HTTPS on 127.0.0.1.

1. ingests ``<shared>/data/dicom`` into ``<state>/store`` (project ``demo``, de-identified at
   ingest: the demo user never sees the sample data's real headers; a re-run changes nothing);
2. on first run generates passwords for an admin and a demo user (kept in
   ``<state>/credentials.json``, mode 0600; nothing is in the repository) and a self-signed
   certificate (``<state>/hub/tls``);
3. starts hub + proxy + Dask Gateway, signs both accounts up through the hub's forms and approves
   the demo user as the admin (first run), then prints the URL and the credentials;
4. Ctrl-C stops everything and checks that no process is left.

As root each hub user is a unix user (``vhadmin``, ``vhdemo``, created on their first login);
without root it falls back to the no-isolation laptop mode and says so.  ``--clean`` removes the
demo's unix accounts, the demo project's unix group and its state folder.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
from pathlib import Path

from voxelhub_hub.client import HubBrowser
from voxelhub_hub.project_groups import remove_group, unix_group
from voxelhub_hub.stack import HubStack
from voxelhub_hub.system_users import remove_account, remove_managed_group_if_unused

ADMIN, USER, PROJECT = "vhadmin", "vhdemo", "demo"


def _credentials(state: Path) -> tuple[dict[str, str], bool]:
    """Passwords of the demo accounts (generated once, 0600); True if they were just made."""
    path = state / "credentials.json"
    if path.exists():
        return json.loads(path.read_text()), False
    creds = {ADMIN: secrets.token_urlsafe(16), USER: secrets.token_urlsafe(16)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f, indent=2)
    return creds, True


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shared", required=True, type=Path, help="the shared/ folder with data/dicom"
    )
    parser.add_argument(
        "--state", required=True, type=Path, help="demo state folder (store, hub state)"
    )
    parser.add_argument("--port", type=int, default=8443, help="public HTTPS port on 127.0.0.1")
    parser.add_argument("--clean", action="store_true", help="remove the demo's accounts and state")
    args = parser.parse_args(argv)
    state = args.state.resolve()
    root = os.geteuid() == 0

    if args.clean:
        if root:
            for name in (ADMIN, USER):
                remove_account(name)
            remove_group(PROJECT)
            remove_managed_group_if_unused()
        shutil.rmtree(state, ignore_errors=True)
        print(
            f"removed {state}"
            + (
                f", the unix accounts {ADMIN}, {USER} and group {unix_group(PROJECT)}"
                if root
                else ""
            )
        )
        return 0

    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o755)  # users reach the store and their cluster folders below it
    os.environ.setdefault("VOXELHUB_SECRETS_DIR", str(state / "secrets"))
    from voxelhub import ingest

    store = state / "store"
    from voxelhub.errors import CatalogError

    try:
        # de-identified: the demo user works on pseudonyms, never the sample data's real headers
        report = ingest(args.shared / "data" / "dicom", store, project=PROJECT, deidentify=True)
    except CatalogError as e:
        print(f"{e}\n(a demo store from an older version: `make hub-demo-clean`, then again)")
        return 2
    print(report.summary())

    creds, first_run = _credentials(state)
    spawner = "system" if root else "simple"
    if not root:
        print(
            "\n!!! not root: LAPTOP MODE, every user runs as you, no isolation between users !!!\n"
        )
    stack = HubStack(
        state / "hub",
        store=store,
        admins=[ADMIN],
        projects={PROJECT: [USER]},
        spawner=spawner,
        tls=True,
        ports={"VOXELHUB_HUB_PORT": args.port},
        extra_env={"VOXELHUB_EXCHANGE_USER": "voxelhub-exchange"},  # nbgrader's exchange service
    )
    pacs = None
    if root:  # the DICOM edge (issue 11) and a demo PACS in a network namespace of its own
        from voxelhub_dicom.demo import DemoPacs

        pacs = DemoPacs(state, PROJECT)
        stack.extra_env["VOXELHUB_DICOM_EDGE"] = str(pacs.settings)
    # Ctrl-C (SIGINT) and SIGTERM both end the wait below and stop the stack
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        seconds = stack.start()
        print(f"hub + proxy + gateway up in {seconds:.1f} s")
        if first_run:
            admin = HubBrowser(stack.url, stack.verify)
            admin.signup(ADMIN, creds[ADMIN])  # admins are approved on sign-up
            HubBrowser(stack.url, stack.verify).signup(USER, creds[USER])
            admin.login(ADMIN, creds[ADMIN])
            admin.approve(USER)
            admin.api("DELETE", f"/users/{ADMIN}/server", ok=(202, 204, 400, 404))
        print(
            f"\nVoxelHub is running at {stack.url}/  (self-signed certificate: {stack.cafile})\n"
            f"  user : {USER} / {creds[USER]}   (project '{PROJECT}')\n"
            f"  admin: {ADMIN} / {creds[ADMIN]}   (approves sign-ups at {stack.url}/hub/authorize)\n"
            f"  credentials are kept in {state / 'credentials.json'} (0600)\n"
            f"  log: {stack.log_path}\n"
            + (
                pacs.banner(args.shared / "data" / "dicom" / "ct_ge_hispeed_gantry_tilt") + "\n"
                if pacs
                else ""
            )
            + "Ctrl-C stops everything."
        )
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping ...")
        survivors = stack.stop()
        if pacs is not None:
            pacs.close()
        print("stopped; " + (f"killed stragglers: {survivors}" if survivors else "no process left"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
