"""Colour images (RGB, e.g. a colour FA map): which ones become volumes, and their channels.

A colour volume is stored with a channel axis ``c`` (R, G, B) in front of ``z, y, x``.  Its
samples are stored unchanged (no rescale: colour images have none), in the order pydicom
decodes them: planar configuration 0 and 1 alike, YBR_FULL and YBR_FULL_422 converted to RGB
the way ``pydicom.pixels.convert_color_space`` does, and YBR_ICT / YBR_RCT (JPEG 2000) as the
codec returns them, which is RGB.  Other interpretations — PALETTE COLOR (index values looked
up in a table), YBR_PARTIAL_*, the retired ARGB/CMYK/HSV — are refused with a reason naming
the interpretation, as are colour images whose sample count is not 3.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

CHANNELS = ("R", "G", "B")
"""Channel labels of a stored colour volume, in the order of its ``c`` axis."""

CHANNEL_COLOURS = ("FF0000", "00FF00", "0000FF")
"""Display colour of each channel (NGFF ``omero`` metadata)."""

GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})
COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})
"""Three-sample interpretations that decode to RGB (pydicom converts YBR_FULL/_422)."""


@dataclass(frozen=True)
class Refusal:
    """Why a file's pixels cannot become a volume, and the tag at fault."""

    reason: str
    tag: str


def photometric(ds: Dataset) -> str:
    """The file's PhotometricInterpretation, upper case ('MONOCHROME2' when absent)."""
    value = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    return value or "MONOCHROME2"


def samples_per_pixel(ds: Dataset) -> int:
    value = ds.get("SamplesPerPixel")
    return 1 if value is None or value == "" else int(value)


def is_colour(ds: Dataset) -> bool:
    return samples_per_pixel(ds) == 3 and photometric(ds) in COLOUR


def is_subsampled(ds: Dataset) -> bool:
    """Native YBR_FULL_422 holds two samples per pixel (Cb, Cr shared by pixel pairs)."""
    return samples_per_pixel(ds) == 3 and photometric(ds) == "YBR_FULL_422"


def unsupported(ds: Dataset) -> Refusal | None:
    """None when the pixels are grey or a colour VoxelHub stores, else why not."""
    spp = samples_per_pixel(ds)
    kind = photometric(ds)
    if spp == 1 and kind not in GREY:
        what = "palette colour" if kind == "PALETTE COLOR" else "an interpretation"
        return Refusal(
            f"photometric interpretation {kind} ({what}) is not one VoxelHub converts: "
            f"grey images must be {' or '.join(sorted(GREY))}, colour ones "
            f"{', '.join(sorted(COLOUR))} with 3 samples per pixel",
            "(0028,0004)",
        )
    if spp == 3 and kind not in COLOUR:
        return Refusal(
            f"colour photometric interpretation {kind} is not one VoxelHub converts "
            f"(supported: {', '.join(sorted(COLOUR))})",
            "(0028,0004)",
        )
    if spp not in (1, 3):
        return Refusal(
            f"{spp} samples per pixel ({kind}): only grey (1) and colour (3) images are volumes",
            "(0028,0002)",
        )
    return None
