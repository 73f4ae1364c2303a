"""The autograding sandbox refuses, naming why, where bwrap cannot make one (issue 12).

Where user namespaces are missing, as in some Kubernetes pods, is made real here with an outer
bubblewrap that forbids them (``--disable-userns``).  The sandbox at work, with a hostile
submission, is in test_teaching_assignment.py and test_teaching.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from voxelhub.grading_sandbox import GradingSandbox, GradingSandboxUnavailable

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
HUB_JUPYTER = Path(__file__).resolve().parents[2] / "hub_config" / "jupyter"

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


def test_nbgrader_kernels_talk_over_unix_sockets_in_the_private_runtime_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nbgrader validate's kernel, with the hub's nbgrader config, is reached over unix sockets
    in the user's runtime folder, not over TCP where another local user could listen in."""
    import nbformat
    from nbgrader.preprocessors import Execute
    from traitlets.config.loader import PyFileConfigLoader

    runtime = tmp_path / "runtime"
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    config = PyFileConfigLoader("nbgrader_config.py", path=str(HUB_JUPYTER)).load_config()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import json, ipykernel\n"
            "c = json.load(open(ipykernel.get_connection_file()))\n"
            "print(c['transport'], c['ip'])"
        )
    ]
    nb, _ = Execute(config=config).preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    transport, ip = nb.cells[0].outputs[0]["text"].split()
    assert transport == "ipc" and Path(ip).parent == runtime, (transport, ip)
    assert not list(tmp_path.glob("kernel-ipc*"))  # nothing left in the notebook's folder
