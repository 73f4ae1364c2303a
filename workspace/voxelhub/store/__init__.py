"""The store layer: where bytes live (local path or fsspec URL) and OME-Zarr read/write."""
