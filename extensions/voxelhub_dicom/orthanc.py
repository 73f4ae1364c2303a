"""Orthanc's configuration from :class:`~voxelhub_dicom.edge.DicomEdge`, and its REST API.

Settings from ``../shared/notes/orthanc.md``: compression off for REST pulls, authentication
on with a password made at every start, remote HTTP access refused (only loopback inside the
namespace, where the worker runs), callers allowed by calling AE title *and* host
(``DicomModalities`` with ``DicomAlwaysAllowStore`` off and ``DicomCheckModalityHost`` on: an
unknown caller is refused at association), AE titles compared case-sensitively.  Which caller may
send to which project's AE title is a Lua ``ReceivedInstanceFilter``: a known caller sending to
a title of a project it is not allowed into has every instance refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
REFUSED_MARK = "VOXELHUB-REFUSED"


def parse_caller(text: str) -> tuple[str, str]:
    """``'AETITLE@host'`` → ``(aet, host)``."""
    aet, sep, host = text.rpartition("@")
    if not sep or not aet or not host or len(aet) > 16:
        raise ValueError(f"a caller is 'AETITLE@host' (AE title up to 16 characters): {text!r}")
    return aet, host


def orthanc_config(
    *,
    name: str,
    storage: str,
    http_port: int,
    dicom_port: int,
    user: str,
    password: str,
    called_aet: str,
    callers: Sequence[str],
    lua: str,
    stable_seconds: int,
    dicomweb: bool = True,
) -> dict[str, Any]:
    modalities = {}
    for n, caller in enumerate(sorted(set(callers))):
        aet, host = parse_caller(caller)
        modalities[f"caller{n}"] = {
            "AET": aet,
            "Host": host,
            "Port": 104,  # never used: the edge sends nothing back
            "AllowEcho": True,
            "AllowStore": True,
            "AllowFind": False,
            "AllowMove": False,
            "AllowGet": False,
            "AllowStorageCommitment": False,
        }
    config: dict[str, Any] = {
        "Name": name,
        "StorageDirectory": storage,
        "IndexDirectory": storage,
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {user: password},
        "HttpCompressionEnabled": False,
        "HttpDescribeErrors": True,
        "DicomServerEnabled": True,
        "DicomAet": called_aet,
        "DicomPort": dicom_port,
        # several AE titles (one or more per project) reach this one server; which may be
        # called, and by whom, is the Lua filter's decision
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "StrictAetComparison": True,
        "DicomModalities": modalities,
        "UnknownSopClassAccepted": False,
        "OverwriteInstances": False,
        "StableAge": stable_seconds,
        "SaveJobs": False,
        "ConcurrentJobs": 2,
        "DicomThreadsCount": 4,
        "HttpThreadsCount": 10,
        "LuaScripts": [lua],
        "Plugins": [DICOMWEB_PLUGIN] if dicomweb else [],
    }
    if dicomweb:
        config["DicomWeb"] = {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Host": f"127.0.0.1:{http_port}",
            "Ssl": False,
        }
    return config


def lua_filter(ae_titles: Mapping[str, str], callers: Mapping[str, Sequence[str]]) -> str:
    """The Lua ``ReceivedInstanceFilter``: called AE title → the callers allowed into its project.

    Instances that arrive by DICOM networking to an unknown AE title, or from a caller not
    allowed into that title's project, are dropped, never stored, and the refusal is logged with
    :data:`REFUSED_MARK` for the worker to audit and list.  Orthanc 1.10.1 (Debian 12) still
    answers C-STORE Success for a filtered instance (``IncomingCStoreInstanceFilter``, which can
    answer an error status, is not in that version), so the sender is not told.
    """
    lines = ["local allowed = {"]
    for title, project in sorted(ae_titles.items()):
        allowed = sorted("{}@{}".format(*parse_caller(c)) for c in callers.get(project, ()))
        inner = ", ".join(f"[{json.dumps(c)}] = true" for c in allowed)
        lines.append(f"  [{json.dumps(title)}] = {{ {inner} }},")
    lines.append("}")
    lines.append(
        f"""
function ReceivedInstanceFilter(dicom, origin, info)
  if origin["RequestOrigin"] ~= "DicomProtocol" then
    return true
  end
  local called = origin["CalledAet"] or ""
  local caller = (origin["RemoteAet"] or "") .. "@" .. (origin["RemoteIp"] or "")
  local callers = allowed[called]
  if callers == nil then
    print("{REFUSED_MARK} called=" .. called .. " caller=" .. caller .. " reason=unknown AE title")
    return false
  end
  if not callers[caller] then
    print("{REFUSED_MARK} called=" .. called .. " caller=" .. caller .. " reason=caller not allowed into this project")
    return false
  end
  return true
end
"""
    )
    return "\n".join(lines)


class Orthanc:
    """Orthanc's REST API with the edge's credentials (no gzip: ``HttpCompressionEnabled``)."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = (user, password)
        self.session.headers["Accept-Encoding"] = "identity"
        # Orthanc closes idle keep-alive connections: a request on one is sent again
        retry = Retry(total=3, connect=3, read=2, backoff_factor=0.2, allowed_methods=None)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))

    def get(self, path: str, **params: Any) -> Any:
        r = self.session.get(self.url + path, params=params or None, timeout=60)
        r.raise_for_status()
        return r.json()

    def file(self, instance: str) -> bytes:
        r = self.session.get(f"{self.url}/instances/{instance}/file", timeout=120)
        r.raise_for_status()
        return r.content

    def delete(self, path: str) -> None:
        r = self.session.delete(self.url + path, timeout=60)
        if r.status_code != 404:
            r.raise_for_status()

    def ready(self) -> bool:
        try:
            return self.session.get(self.url + "/system", timeout=2).ok
        except requests.RequestException:
            return False
