"""What one 3x3x3 convolution costs per channel count: forward + backward of a Conv3d with
C in and C out channels on a batch of 2 patches 40x56x40 (the size ``budget=`` trains on
MSD), in bf16 autocast and float32, channels-last and contiguous, in ms and GFLOP/s.

On CPUs whose bf16 convolutions block channels by 16 (oneDNN on AVX512-BF16 without AMX),
C = 24 costs about what C = 32 does: a width that is not a multiple of 16 wastes the rest.

    PYTHONPATH=benchmarks python benchmarks/experiments/conv_channels.py --channels 16 24 32 48

Prints a table and writes ``benchmarks/results/conv_channels[_<tag>].json`` with the
machine, the load average and CPU seconds beside each time.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from machine import (  # benchmarks/ is on sys.path when run as a script
    cpu_seconds,
    machine_info,
    write_result,
)
from rich.console import Console
from rich.table import Table


def conv_step(channels: int, shape: list[int], bf16: bool, channels_last: bool, repeats: int):
    """Mean seconds of forward + backward (input and weight gradients), and CPU seconds."""
    conv = torch.nn.Conv3d(channels, channels, 3, padding=1, bias=False)
    x = torch.randn(2, channels, *shape)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = conv(x)
        y.float().sum().backward()

    for _ in range(2):
        step()
    start, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats, (cpu_seconds() - cpu) / repeats


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 24, 32, 48])
    parser.add_argument("--shape", type=int, nargs=3, default=[40, 56, 40])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tag", default="", help="suffix of the JSON file")
    args = parser.parse_args()
    voxels = 2 * args.shape[0] * args.shape[1] * args.shape[2]
    rows = []
    for c in args.channels:
        # forward, input gradient, weight gradient: 3 x (2 flops per multiply-add)
        gflop = 3 * 2 * voxels * c * c * 27 / 1e9
        for bf16 in (True, False):
            for last in (True, False):
                wall, cpu = conv_step(c, args.shape, bf16, last, args.repeats)
                rows.append(
                    {
                        "channels": c,
                        "precision": "bf16" if bf16 else "fp32",
                        "layout": "channels_last" if last else "contiguous",
                        "ms": round(wall * 1000, 1),
                        "cpu_ms": round(cpu * 1000, 1),
                        "gflop_per_s": round(gflop / wall, 1),
                        "loadavg_1m": round(os.getloadavg()[0], 2),
                    }
                )
    table = Table(title=f"Conv3d 3x3x3 CxC, fwd + bwd, batch 2 x {args.shape}")
    for col in ("C", "precision", "layout", "ms", "CPU ms", "GFLOP/s", "load 1m"):
        table.add_column(col, justify="left" if col in ("precision", "layout") else "right")
    for r in rows:
        table.add_row(
            str(r["channels"]), r["precision"], r["layout"], f"{r['ms']:.1f}",
            f"{r['cpu_ms']:.1f}", f"{r['gflop_per_s']:.0f}", f"{r['loadavg_1m']:.2f}",
        )  # fmt: skip
    Console().print(table)
    out = {
        "what": "Conv3d 3x3x3 forward + backward per channel count (ms, GFLOP/s)",
        "shape": args.shape,
        "batch": 2,
        "results": rows,
        "machine": machine_info(),
    }
    write_result("conv_channels", args.tag, out)
    return out


if __name__ == "__main__":
    main()
