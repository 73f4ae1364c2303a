"""VoxelHub's data service: the one gate for every read of the store on a multi-user hub.

- :mod:`voxelhub_data.app`: the Tornado application and its traitlets configuration.
- :mod:`voxelhub_data.access`: roles in projects from hub groups.
- :mod:`voxelhub_data.paths`: untrusted store keys and byte ranges, checked.
- :mod:`voxelhub_data.catalog_view`: catalog queries within the caller's projects.
- :mod:`voxelhub_data.audit_trail`: every decision to :mod:`voxelhub.audit`.

Run by the hub as a managed service (``python -m voxelhub_data``); imports :mod:`voxelhub`.
"""
