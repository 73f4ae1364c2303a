"""nbgrader on the hub: the exchange is the hub service, never a shared folder.

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
