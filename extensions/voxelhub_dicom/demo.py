"""``make demo``'s PACS: a network namespace of its own, joined to the edge by a veth pair.

The edge takes one end of the pair into its namespace (``interface``); the other end is the
demo PACS's, at ``10.231.255.2``, allowed to send into project ``demo`` as ``DEMOPACS``.  Hub
users on the host reach neither.  :meth:`DemoPacs.banner` says how to send a series from it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from voxelhub_dicom.netns import NetNamespace

EDGE_LINK, PACS_LINK = "vhdemoedge", "vhdemopacs"
EDGE_IP, PACS_IP = "10.231.255.1", "10.231.255.2"
AE_TITLE, CALLER, PORT = "VHDEMO", "DEMOPACS", 11112


class DemoPacs:
    def __init__(self, state: Path, project: str) -> None:
        self.project = project
        # a pair a killed demo left behind (ours by name) goes first
        subprocess.run(["ip", "link", "del", EDGE_LINK], capture_output=True, check=False)
        self.ns = NetNamespace()
        try:
            subprocess.run(
                ["ip", "link", "add", EDGE_LINK, "type", "veth", "peer", "name", PACS_LINK],
                check=True,
                capture_output=True,
            )
            subprocess.run(
                ["ip", "link", "set", PACS_LINK, "netns", str(self.ns.pid)],
                check=True,
                capture_output=True,
            )
            self.ns.run(["ip", "addr", "add", f"{PACS_IP}/24", "dev", PACS_LINK])
            self.ns.run(["ip", "link", "set", PACS_LINK, "up"])
        except BaseException:
            self.close()
            raise
        self.settings = state / "dicom_edge.json"
        fd = os.open(self.settings, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(
                {
                    "ae_titles": {AE_TITLE: project},
                    "callers": {project: [f"{CALLER}@{PACS_IP}"]},
                    "deidentify": {project: True},
                    "stable_seconds": 10,
                    "interface": EDGE_LINK,
                    "address": f"{EDGE_IP}/24",
                    "dicom_port": PORT,
                },
                f,
                indent=2,
            )

    def banner(self, series: Path) -> str:
        return (
            f"  DICOM: port {PORT} at {EDGE_IP} (the edge's own network namespace), AE title "
            f"{AE_TITLE} -> project '{self.project}' (de-identified at arrival)\n"
            f"    send from the demo PACS ({CALLER}@{PACS_IP}), as root:\n"
            f"    nsenter --net=/proc/{self.ns.pid}/ns/net env TCP_NODELAY=1 storescu -aet "
            f"{CALLER} -aec {AE_TITLE} {EDGE_IP} {PORT} {series}/*.dcm\n"
            f"    arrivals: GET <data service>/api/arrivals?project={self.project} (curators)"
        )

    def close(self) -> None:
        self.ns.close()  # the veth pair goes with the namespaces
