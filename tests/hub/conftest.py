"""Shared by the hub tests."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator

import pytest


@pytest.fixture
def data_account(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A throwaway name for the data service's account: loading the hub config as root creates
    it (``$VOXELHUB_DATA_USER``); removed afterwards, so no test leaves a system user behind."""
    account = f"vhdcfg{secrets.token_hex(3)}"
    exchange = account.replace("vhdcfg", "vhxcfg")  # the nbgrader exchange's account
    monkeypatch.setenv("VOXELHUB_DATA_USER", account)
    monkeypatch.setenv("VOXELHUB_EXCHANGE_USER", exchange)
    yield account
    for name in (account, exchange):
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)
