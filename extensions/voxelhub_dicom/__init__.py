"""VoxelHub's DICOM edge: a PACS or a modality sends studies by C-STORE into a project.

- :mod:`voxelhub_dicom.edge`: the supervisor (a hub managed service, run as root): its
  traitlets configuration (:class:`~voxelhub_dicom.edge.DicomEdge`), a private network
  namespace, Orthanc and the arrival worker inside it, stopped by PID.
- :mod:`voxelhub_dicom.orthanc`: Orthanc's JSON configuration and Lua filter from that
  configuration, and a small REST client.
- :mod:`voxelhub_dicom.netns`: the network namespace (a holder process; gone with it).
- :mod:`voxelhub_dicom.worker`: inside the namespace, as the data service's account: stable
  studies fetched from Orthanc's REST API, checked instance by instance, ingested with
  :func:`voxelhub.ingest.ingest`, removed from Orthanc, audited.
- :mod:`voxelhub_dicom.checks`: the per-instance check (truncated, corrupt, not an image).
- :mod:`voxelhub_dicom.arrivals`: the arrivals and their state (SQLite), read by the data
  service for the project's curators (``GET api/arrivals``).
"""
