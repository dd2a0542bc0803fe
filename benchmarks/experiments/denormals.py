"""What denormal floats cost on this CPU, with the flush flag off, set late (after torch's
threads started: the main thread only) and set first (every thread, as ``hsftrain train``
now does).

Each setting runs in a fresh interpreter (the flag is per thread, and torch's threads start
once per process). Workloads, each timed over a few repeats on inputs of denormal floats
(about 1e-39) and on the same shapes of normal floats:

* ``mul``: an elementwise multiply-add over 8M float32 values (torch's own kernels);
* ``conv3d``: a 3x3x3 convolution forward + backward, 24 channels on a 2x40x56x40 batch
  (oneDNN), in float32;
* ``conv3d-bf16``: the same under bf16 autocast (how training runs on a CPU with AMX).

    PYTHONPATH=benchmarks python benchmarks/experiments/denormals.py

Prints a table and writes ``benchmarks/results/denormals/flush_flag.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import machine_info  # benchmarks/ is on sys.path when run as a script
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
MODES = ("off", "late", "first")
WORKLOADS = ("mul", "conv3d", "conv3d-bf16")
#: float32 bits of about 1e-39 (a denormal)
DENORMAL_BITS = 0x000AE398


def child(mode: str) -> dict[str, dict[str, float]]:
    """Time every workload in this interpreter with the flag set as ``mode`` says."""
    import torch

    if mode == "first":
        torch.set_flush_denormal(True)
    torch.ones(1 << 20).mul_(2.0)  # starts torch's threads
    if mode == "late":
        torch.set_flush_denormal(True)
    torch.manual_seed(0)

    def tensor(shape: tuple[int, ...], denormal: bool) -> torch.Tensor:
        if not denormal:
            return torch.rand(shape) + 0.5
        # random denormal mantissas, made as integers: the same inputs whatever the flag
        bits = torch.randint(DENORMAL_BITS // 2, DENORMAL_BITS * 2, shape, dtype=torch.int32)
        return bits.view(torch.float32)

    out: dict[str, dict[str, float]] = {}
    for workload in WORKLOADS:
        row = {}
        for denormal in (False, True):
            if workload == "mul":
                a, b = tensor((1 << 23,), denormal), tensor((1 << 23,), False)

                def run(a: torch.Tensor = a, b: torch.Tensor = b) -> None:
                    torch.addcmul(a, a, b)

                repeats = 20
            else:
                conv = torch.nn.Conv3d(24, 24, 3, padding=1)
                x = tensor((2, 24, 40, 56, 40), denormal).requires_grad_(True)
                x = x.contiguous(memory_format=torch.channels_last_3d)  # as training runs
                conv = conv.to(memory_format=torch.channels_last_3d)
                bf16 = workload.endswith("bf16")

                def run(
                    conv: torch.nn.Module = conv, x: torch.Tensor = x, bf16: bool = bf16
                ) -> None:
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        conv(x).float().sum().backward()

                repeats = 5
            run()  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                run()
            row["denormal" if denormal else "normal"] = (time.perf_counter() - start) / repeats
        out[workload] = row
    return out


def main() -> dict:
    results: dict[str, dict] = {}
    for mode in MODES:
        done = subprocess.run(
            [sys.executable, __file__, "--child", mode],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        )
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    table = Table(title="denormal floats: seconds per call (normal / denormal inputs)")
    table.add_column("flush flag")
    for workload in WORKLOADS:
        table.add_column(workload, justify="right")
    for mode in MODES:
        cells = []
        for workload in WORKLOADS:
            r = results[mode][workload]
            cells.append(f"{r['normal']:.4f} / {r['denormal']:.4f}")
        table.add_row(mode, *cells)
    Console().print(table)
    record = {
        "what": "seconds per call on normal / denormal float inputs, by when the flush flag is set",
        "modes": {"off": "never", "late": "after torch's threads started", "first": "first"},
        "results": results,
        "loadavg_1m": os.getloadavg()[0],
        "machine": machine_info(),
    }
    out = ROOT / "benchmarks" / "results" / "denormals" / "flush_flag.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
    else:
        main()
