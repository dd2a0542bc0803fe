"""Denormal floats flushed on every CPU thread (each test in a fresh interpreter: the flag
is per thread and torch's threads start once per process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_flag_after_threads_started_is_reported():
    out = _python(
        """
        import torch
        torch.set_num_threads(2)
        from hsftrain.training.denormals import all_threads_flush, flush_denormals
        print(all_threads_flush(), flush_denormals(), all_threads_flush())
        """
    )
    # no flag: denormals kept; the check started torch's threads, so setting the flag now
    # reaches the main thread only, and flush_denormals says so
    assert out == "False False False"


def test_flag_before_threads_start_covers_every_thread():
    out = _python(
        """
        import torch
        torch.set_num_threads(2)
        from hsftrain.training.denormals import all_threads_flush, flush_denormals
        print(flush_denormals(), all_threads_flush())
        """
    )
    assert out == "True True"


def test_run_sets_the_flag_before_torch_starts_its_threads(phantoms, tmp_path):
    """``run`` (train and finetune) sets it before its first torch operation: the threads
    that training uses all flush (the check is swapped in for the training itself)."""
    out = _python(
        f"""
        import torch
        torch.set_num_threads(2)
        from hsftrain.config.compose import compose
        from hsftrain.training import run as module
        from hsftrain.training.denormals import all_threads_flush
        module._run = lambda cfg, finetune=False, attempt=None: {{"flush": all_threads_flush()}}
        cfg = compose("config", ["datasets=synth", "datasets.main_path={phantoms}",
                                 "datasets.output_path={tmp_path}", "run_name=r"])
        print(module.run(cfg)["flush"])
        """
    )
    assert out == "True"
