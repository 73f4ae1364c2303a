"""The per-instance check lives in :mod:`voxelhub.dicom.checks`, shared with ``voxelhub pull``."""

from voxelhub.dicom.checks import LABEL_CLASSES, check_dataset, check_instance

__all__ = ["LABEL_CLASSES", "check_dataset", "check_instance"]
