"""nbgrader on the hub: the exchange is the hub service, never a shared folder; autograding
kernels run in a sandbox.

Every server on the hub reads this (``$JUPYTER_CONFIG_PATH``); the hub sets
``$VOXELHUB_EXCHANGE_URL``.  See ``voxelhub.nbgrader_exchange`` and
``voxelhub_hub.exchange_service``.
"""

import os

c = get_config()  # type: ignore[name-defined]  # noqa: F821

if os.environ.get("VOXELHUB_EXCHANGE_URL"):
    for _trait, _cls in {
        "exchange": "Exchange",
        "fetch_assignment": "ExchangeFetchAssignment",
        "fetch_feedback": "ExchangeFetchFeedback",
        "release_assignment": "ExchangeReleaseAssignment",
        "release_feedback": "ExchangeReleaseFeedback",
        "list": "ExchangeList",
        "submit": "ExchangeSubmit",
        "collect": "ExchangeCollect",
    }.items():
        setattr(c.ExchangeFactory, _trait, f"voxelhub.nbgrader_exchange.{_cls}")

# Autograding runs submitted code: its kernels start in a bubblewrap sandbox (no hub token, no
# other process, only the submission's own folder writable), or grading refuses naming why.
# Settings: c.GradingSandbox.* (voxelhub/grading_sandbox.py, with help texts).
from nbgrader.converters.autograde import Autograde  # noqa: E402
from nbgrader.preprocessors import Execute  # noqa: E402

c.Autograde.autograde_preprocessors = [
    "voxelhub.grading_sandbox.SandboxedExecute" if p is Execute else p
    for p in Autograde.class_traits()["autograde_preprocessors"].make_dynamic_default()
]

# nbgrader's own kernels (validate in every server, and autograde's where unsandboxed) talk to
# their client over unix sockets in the user's private runtime folder, as the servers' kernels
# do: the servers' --KernelManager.transport=ipc does not reach nbgrader's kernel managers, and
# over TCP on 127.0.0.1 any local user could subscribe to such a kernel's output.
from jupyter_core.paths import jupyter_runtime_dir  # noqa: E402
from jupyter_core.utils import ensure_dir_exists  # noqa: E402

ensure_dir_exists(jupyter_runtime_dir(), mode=0o700)
c.KernelManager.transport = "ipc"
c.KernelManager.ip = os.path.join(jupyter_runtime_dir(), "nbgrader-kernel-ipc")
