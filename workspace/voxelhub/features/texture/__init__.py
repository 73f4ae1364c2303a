"""Texture matrix families (IBSI 3.6–3.11), one module per matrix.

Each ``features(grey, n_levels, aggregations, ...)`` takes the discretised ROI (grey levels
1..Ng, 0 outside the intensity mask) and returns ``{ibsi_tag: value}``.
"""

from __future__ import annotations
