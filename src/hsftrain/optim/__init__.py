"""Optimiser and learning-rate schedule."""

from hsftrain.optim.adamp import AdamP, agc_, demon_beta
from hsftrain.optim.schedule import WarmupCosine, warmup_cosine, warmup_cosine_factor

__all__ = ["AdamP", "WarmupCosine", "agc_", "demon_beta", "warmup_cosine", "warmup_cosine_factor"]
