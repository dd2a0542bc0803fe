"""Pre-processing of a crop before the model, and its undoing: the shared implementation
in :mod:`hsftrain.data.intensity` (z-normalisation, padding to a multiple of 8)."""

from __future__ import annotations

from hsftrain.data.intensity import pad_to_multiple, unpad, z_normalize

__all__ = ["pad_to_multiple", "unpad", "z_normalize"]
