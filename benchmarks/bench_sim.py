"""Engine benchmark: ``msat.simulate`` against the dense bound and a naive per-step loop.

Measured side by side in one run (rounds A B C D A B C D ..., medians), each printed as a ratio
to the dense bound = T x one ANN forward at batch B (the converted graph as the ANN):

    A  dense bound            T x ann_forward(x)
    B  simulate, fixed        msat.simulate with the fixed threshold
    C  simulate, msat         msat.simulate with the MSAT threshold
    D  naive per-step loop    the whole converted network once per step on batch B

Then the peak memory of ``simulate`` at T, 2T and 8T with the same chunk (fresh subprocess per
measurement: RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA; glibc serves the first
chunk's buffers by mmap and later ones partly from the heap, so on CPU T=2T is the fair
reference for 8T). On CPU the run first calls
``msat.simulation.tune_cpu_allocator()`` (what a CPU user should do; ``--no-tune-malloc`` not).

    python benchmarks/bench_sim.py                                  # CPU, B=16, T=32, 2 threads
    python benchmarks/bench_sim.py --no-tune-malloc                 # glibc's default allocator behaviour
    python benchmarks/bench_sim.py --device cuda --batch 128 --T 256
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.fx as fx

import msat
from msat.neurons import SpikingNeuron, reset_net
from msat.pooling import SpikingPool
from msat.simulation import tune_cpu_allocator


def build(args: argparse.Namespace, threshold: str) -> tuple[msat.SpikingNetwork, torch.Tensor]:
    torch.manual_seed(0)
    model = msat.create_model(args.model, num_classes=10).to(args.device).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 3, 32, 32, generator=g).to(args.device)
    snn = msat.convert(model, x, {"neuron": {"threshold": threshold}})
    return snn, x


class NaiveStepper(fx.Interpreter):
    """The straightforward simulator: the whole graph once per step, neurons updated per step."""

    def __init__(self, snn: msat.SpikingNetwork, batch: int):
        super().__init__(snn.graph_module)
        self.batch = batch

    def call_module(self, target, args, kwargs):
        m = self.fetch_attr(target)
        if isinstance(m, SpikingNeuron):
            return m.run_chunk(args[0], 1, self.batch)[0]
        if isinstance(m, SpikingPool):
            return m.run_chunk(args[0], 1, self.batch)
        return super().call_module(target, args, kwargs)


def naive_simulate(snn: msat.SpikingNetwork, x: torch.Tensor, T: int) -> torch.Tensor:
    reset_net(snn)
    stepper = NaiveStepper(snn, x.shape[0])
    with torch.no_grad():
        return torch.stack([stepper.run(x) for _ in range(T)])


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def run_speed(args: argparse.Namespace) -> None:
    snn_fixed, x = build(args, "fixed")
    snn_msat, _ = build(args, "msat")
    T = args.T

    def dense():
        with torch.no_grad():
            for _ in range(T):
                snn_fixed.ann_forward(x)

    cases = {
        "dense bound (T x ANN forward)": dense,
        "simulate, fixed threshold": lambda: msat.simulate(snn_fixed, x, T, chunk=args.chunk),
        "simulate, msat threshold": lambda: msat.simulate(snn_msat, x, T, chunk=args.chunk),
        "naive per-step loop (fixed)": lambda: naive_simulate(snn_fixed, x, T),
    }
    if args.skip_naive:
        cases.pop("naive per-step loop (fixed)")
    for fn in cases.values():        # warm-up
        timed(fn, args.device)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for k, fn in cases.items():
            times[k].append(timed(fn, args.device))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["dense bound (T x ANN forward)"]
    print(f"model={args.model} device={args.device} B={args.batch} T={T} chunk={args.chunk} "
          f"threads={torch.get_num_threads()} rounds={args.rounds}")
    for k, v in med.items():
        print(f"  {k:32s} {v:8.3f} s   {v / base:6.3f} x dense   {args.batch * T / v:10.1f} image-steps/s")


def measure_memory(args: argparse.Namespace) -> dict:
    """In this (fresh) process: peak memory added by one simulate call."""
    snn, x = build(args, args.mem_threshold)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        msat.simulate(snn, x, args.T, chunk=args.chunk)
        torch.cuda.synchronize()
        return {"peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20}
    with open("/proc/self/statm") as f:
        base = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    msat.simulate(snn, x, args.T, chunk=args.chunk)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_mb": (peak - base) / 2**20}


def run_memory(args: argparse.Namespace) -> None:
    Ts = (args.T, 2 * args.T, 8 * args.T)
    res = {}
    for T in Ts:
        for threshold in ("fixed", "msat"):
            cmd = [sys.executable, __file__, "--_memory", "--T", str(T), "--device", args.device,
                   "--batch", str(args.batch), "--chunk", str(args.chunk), "--model", args.model,
                   "--threads", str(args.threads), "--mem-threshold", threshold]
            cmd.append("--no-tune-malloc")    # the engine's own memory, without heap fragmentation
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res[(T, threshold)] = json.loads(out.strip().splitlines()[-1])["peak_mb"]
    for threshold in ("fixed", "msat"):
        a, b, c = (res[(T, threshold)] for T in Ts)
        print(f"  peak memory of simulate ({threshold:5s}, chunk={args.chunk}): " +
              "   ".join(f"T={T}: {m:7.1f} MB" for T, m in zip(Ts, (a, b, c))) +
              f"   T={Ts[2]}/T={Ts[0]}: {c / a:5.3f}   T={Ts[2]}/T={Ts[1]}: {c / b:5.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--T", type=int, default=32)
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-naive", action="store_true", help="skip the naive loop (slow at large T)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--no-tune-malloc", dest="tune_malloc", action="store_false",
                   help="CPU: do not call msat.simulation.tune_cpu_allocator() (large chunk buffers are then "
                        "page-faulted in again at every chunk: ~10-20%% slower at chunk=32)")
    p.add_argument("--_memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mem-threshold", default="fixed", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.tune_malloc and not args.device.startswith("cuda"):
        print(f"tune_cpu_allocator: {tune_cpu_allocator()}")
    if args._memory:
        print(json.dumps(measure_memory(args)))
        return
    run_speed(args)
    if not args.skip_memory:
        run_memory(args)


if __name__ == "__main__":
    main()
