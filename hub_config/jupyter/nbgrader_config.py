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
