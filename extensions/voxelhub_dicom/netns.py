"""A private network namespace held by one process: gone when that process and those inside are.

Orthanc 1.10 cannot bind to 127.0.0.1 only (``../shared/notes/orthanc.md`` §6): its DICOM and
HTTP ports listen on every address.  So it runs in a namespace of its own, which the hub's users
(on the host's network) have no route into.  The only interface besides loopback is the one the
site moves in: the hospital-facing network card, or in the tests one end of a veth pair whose
other end is a PACS's namespace.  A network card moved in goes back to the host when the
namespace goes; a veth end is destroyed with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence


class NetNamespace:
    """``unshare --net sleep infinity``: the namespace lives as long as this holder (and every
    process started in it)."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--", "sleep", "infinity"], start_new_session=True
        )
        mine = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.holder.poll() is not None:
                raise RuntimeError(
                    f"unshare --net exited with {self.holder.returncode}: creating a network "
                    "namespace needs root (CAP_SYS_ADMIN)"
                )
            try:
                if os.readlink(f"/proc/{self.holder.pid}/ns/net") != mine:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.01)
        else:
            self.close()
            raise TimeoutError("the network namespace's holder did not start")
        self.path = f"/proc/{self.holder.pid}/ns/net"
        self.run(["ip", "link", "set", "lo", "up"])

    @property
    def pid(self) -> int:
        return self.holder.pid

    def command(self, argv: Sequence[str], *, user: tuple[int, int] | None = None) -> list[str]:
        """``argv`` run inside the namespace, as ``(uid, gid)`` with no supplementary groups."""
        prefix = ["nsenter", f"--net={self.path}", "--"]
        if user is not None:
            uid, gid = user
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
        return [*prefix, *argv]

    def run(self, argv: Sequence[str]) -> str:
        done = subprocess.run(self.command(argv), capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv)} in the namespace: {done.stderr.strip()}")
        return done.stdout

    def move_in(self, interface: str, address: str, gateway: str = "") -> None:
        """Move a host interface into the namespace and give it ``address`` (CIDR)."""
        done = subprocess.run(
            ["ip", "link", "set", interface, "netns", str(self.pid)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"cannot move {interface} into the edge's namespace: {done.stderr}")
        if address:
            self.run(["ip", "addr", "add", address, "dev", interface])
        self.run(["ip", "link", "set", interface, "up"])
        if gateway:
            self.run(["ip", "route", "add", "default", "via", gateway])

    def close(self, timeout: float = 5) -> None:
        """Stop the holder (by its PID); the namespace goes once nothing else is inside."""
        if self.holder.poll() is None:
            self.holder.send_signal(signal.SIGTERM)
            try:
                self.holder.wait(timeout)
            except subprocess.TimeoutExpired:
                self.holder.kill()
                self.holder.wait()
