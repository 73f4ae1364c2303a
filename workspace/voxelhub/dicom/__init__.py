"""The DICOM layer: header indexing, grouping into volumes, geometry, pixels, de-identification.

Nothing here imports from the layers above (store, catalog, widgets).
"""
