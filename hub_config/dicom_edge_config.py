"""The DICOM edge's configuration (``python -m voxelhub_dicom -f hub_config/dicom_edge_config.py``).

The hub runs the edge as a managed service when ``$VOXELHUB_DICOM_EDGE`` names a JSON file of
the site's settings, ``{"<DicomEdge trait>": value}``; every setting, with its help, is a trait
of :class:`voxelhub_dicom.edge.DicomEdge` (``python -m voxelhub_dicom --help-all``).  Example::

    {
      "ae_titles": {"VHLUNG": "lung", "VHBRAIN": "brain"},
      "callers": {"lung": ["HOSPPACS@10.20.0.5", "CT1@10.20.0.17"], "brain": ["HOSPPACS@10.20.0.5"]},
      "deidentify": {"brain": true},
      "stable_seconds": 60,
      "keep_in_orthanc": false,
      "interface": "eth1",
      "address": "10.20.0.2/24",
      "dicom_port": 11112
    }

``interface`` is the hospital-facing network card, moved into the edge's private network
namespace while the edge runs (Orthanc 1.10 listens on every address: in that namespace, hub
users on the host have no route to it).  The hub fills in the store, the audit log, the data
service's account and the edge's folder (``<hub state>/dicom``) through the environment.
"""

import json
import os

c = get_config()  # type: ignore[name-defined]  # noqa: F821

SITE = os.environ.get("VOXELHUB_DICOM_EDGE", "")
if SITE:
    with open(SITE) as f:
        for name, value in json.load(f).items():
            setattr(c.DicomEdge, name, value)
