"""Flush denormal floats to zero on every CPU thread that trains.

Late in training, tiny weights, gradients and activations become denormal floats, which x86
CPUs process many times more slowly; flushing them to zero changes no result measurably
(docs/decisions.md, "Denormal floats"). The flag is a per-thread CPU setting: ``torch.set_flush_denormal``
sets it on the calling thread only, and torch's intra-op threads copy it when they are
created, i.e. at the first parallel torch operation of the process. Set it before that one
(:func:`flush_denormals` at the start of ``train``/``finetune``), or the other threads keep
computing with denormals: on a 2-core CPU, half of every step.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

#: The bits of a float32 denormal (about 1e-39; the smallest normal float32 is about 1.18e-38),
#: written as an integer: converting 1e-39 to float32 on a flushing thread would give 0.
_DENORMAL_BITS = 0x000AE398
#: Elements per thread in the check: above torch's parallel grain size (32768), so that every
#: intra-op thread takes a share of the multiplication.
_PER_THREAD = 65536


def flush_denormals(warn: bool = False) -> bool:
    """Turn on flush-to-zero for this thread (and the intra-op threads not yet started).

    Args:
        warn: log a warning when some threads keep denormals.

    Returns:
        True when every intra-op thread now flushes denormals; False on a CPU without the
        flag or when torch's threads were started before it was set (those keep it off).
    """
    done = torch.set_flush_denormal(True) and all_threads_flush()
    if not done and warn:
        log.warning(
            "denormal floats are not flushed on every CPU thread (torch's threads started "
            "before hsftrain set the flag, or the CPU lacks it): late-training steps may slow "
            "down; call hsftrain.training.denormals.flush_denormals() before any torch operation"
        )
    return done


def all_threads_flush() -> bool:
    """Whether denormal float32 inputs are read as zero on every intra-op thread: one
    multiplication split across all of them (a thread without the flag leaves its share)."""
    threads = torch.get_num_threads()
    bits = torch.full((threads * _PER_THREAD,), _DENORMAL_BITS, dtype=torch.int32)
    product = bits.view(torch.float32) * 1.0
    # compared as integers: a float comparison on a flushing thread reads a denormal as 0
    return int(torch.count_nonzero(product.view(torch.int32))) == 0
