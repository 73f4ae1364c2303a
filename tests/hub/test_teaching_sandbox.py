"""The autograding sandbox refuses, naming why, where bwrap cannot make one (issue 12).

Where user namespaces are missing, as in some Kubernetes pods, is made real here with an outer
bubblewrap that forbids them (``--disable-userns``).  The sandbox at work, with a hostile
submission, is in test_teaching_assignment.py and test_teaching.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from voxelhub.grading_sandbox import GradingSandbox, GradingSandboxUnavailable

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

CHECK = """
from voxelhub.grading_sandbox import GradingSandbox, GradingSandboxUnavailable
try:
    print("SANDBOXED", GradingSandbox(allow_unsandboxed={allow}).check())
except GradingSandboxUnavailable as exc:
    print("REFUSED", exc)
"""


def _check_without_user_namespaces(allow: bool) -> str:
    outer = ["bwrap", "--unshare-user", "--disable-userns", "--dev-bind", "/", "/"]
    r = subprocess.run(
        [*outer, sys.executable, "-c", CHECK.format(allow=allow)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout + r.stderr


def test_grading_refuses_without_user_namespaces() -> None:
    out = _check_without_user_namespaces(allow=False)
    assert out.startswith("REFUSED autograding refuses to run submitted code: no sandbox"), out
    assert "cannot make its namespaces here" in out and "allow_unsandboxed" in out, out


def test_a_deployment_may_opt_out_and_is_warned() -> None:
    out = _check_without_user_namespaces(allow=True)
    assert "SANDBOXED False" in out, out
    assert "grading WITHOUT a sandbox" in out, out


def test_grading_refuses_without_bubblewrap() -> None:
    with pytest.raises(GradingSandboxUnavailable, match=r"not installed.*bubblewrap"):
        GradingSandbox(bwrap="/nonexistent/bwrap").check()


def test_the_sandbox_works_here() -> None:
    assert GradingSandbox().check() is True
