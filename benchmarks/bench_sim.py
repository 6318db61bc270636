"""Engine benchmark: ``msat.simulate`` against the dense bound, measured side by side in one run.

The dense bound is T x one ANN forward at batch B on the same device and precision (the converted
graph run as the ANN); on CPU it is measured in both memory layouts (NCHW and channels-last) and the
faster one is the bound. Every ratio below is a median of interleaved repeats in one process.

CPU (default; VGG16 CIFAR shapes, random weights, B=16, T=32, chunk=32, 2 threads):

    python benchmarks/bench_sim.py [--naive] [--fused] [--skip-memory]

  runs the speed table twice, each in a fresh process: with plain ``msat.simulate`` (what a library
  user gets: no process-wide setting) and after ``msat.simulation.tune_cpu_allocator()`` (glibc's mmap
  threshold raised), then the peak memory of ``simulate`` at T, 2T and 8T.

GPU (``--device cuda``): for VGG16 and ResNet20 (CIFAR shapes, random weights, calibrated on a random
batch), IF (``if_max``) and MSAT, in fp32 / tf32 / bf16: wall time for ``--images`` (10,000) images at
T=256 in batches of ``--batch``, image-steps per second, the ratio to the dense bound measured in the
same run at the same precision, the peak GPU memory of one batch at T=64 and T=256, and the agreement
of the tf32 and bf16 predictions (at T) with fp32. CUDA events time every run after a warm-up (fused
kernels compiled, CUDA graphs captured); each figure is the median of ``--repeats`` runs.

    python benchmarks/bench_sim.py --device cuda [--images 10000 --batch 500 --T 256 --repeats 3]

Only the public API is used (``msat.create_model``, ``msat.convert``, ``msat.simulate`` with its
``options``, a ``msat.config.EngineOptions``).
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
from contextlib import nullcontext

import torch
import torch.fx as fx

import msat
from msat.config import EngineOptions
from msat.neurons import SpikingNeuron, reset_net
from msat.pooling import SpikingPool

METHODS = {"IF": "if_max", "MSAT": "msat"}


def build(model_name: str, method: str, batch: int, device: str, seed: int = 0) -> tuple:
    """A random-weight model converted with ``method`` on a random calibration batch, and an input batch."""
    torch.manual_seed(seed)
    model = msat.create_model(model_name, num_classes=10).to(device).eval()
    g = torch.Generator().manual_seed(seed + 1)
    calib = torch.rand(max(batch, 64), 3, 32, 32, generator=g).to(device)
    snn = msat.convert(model, calib, {"method": method})
    return snn, calib[:batch]


# ----------------------------------------------------------------------------- CPU

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


DENSE = ("dense, NCHW (T x ANN forward)", "dense, channels-last (T x ANN forward)")


def cpu_speed(args: argparse.Namespace) -> dict:
    """In this process: the medians of interleaved rounds, in seconds.

    The dense bound is measured in both memory layouts, each on a converted network of its own that is never
    simulated (``simulate`` lays a network out channels-last in place); ratios are taken to the faster one."""
    snn_if, x = build(args.model, "if_max", args.batch, "cpu")
    snn_msat, _ = build(args.model, "msat", args.batch, "cpu")
    ann_nchw, _ = build(args.model, "if_max", args.batch, "cpu")
    ann_cl, _ = build(args.model, "if_max", args.batch, "cpu")
    ann_cl.graph_module.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    T = args.T

    def dense(net: msat.SpikingNetwork, inp: torch.Tensor):
        def run():
            with torch.no_grad():
                for _ in range(T):
                    net.ann_forward(inp)
        return run

    cases = {DENSE[0]: dense(ann_nchw, x), DENSE[1]: dense(ann_cl, x_cl),
             "simulate, IF (if_max)": lambda: msat.simulate(snn_if, x, T, chunk=args.chunk),
             "simulate, MSAT (msat)": lambda: msat.simulate(snn_msat, x, T, chunk=args.chunk)}
    if args.fused:
        fused = EngineOptions(fused=True)
        cases["simulate, IF, fused=True"] = lambda: msat.simulate(snn_if, x, T, chunk=args.chunk, options=fused)
        cases["simulate, MSAT, fused=True"] = lambda: msat.simulate(snn_msat, x, T, chunk=args.chunk, options=fused)
    if args.naive:
        cases["naive per-step loop (IF, NCHW)"] = lambda: naive_simulate(ann_nchw, x, T)
    for fn in cases.values():
        fn()                                                        # warm-up
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for k, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def cpu_memory(args: argparse.Namespace) -> dict:
    """In this (fresh) process: peak RSS added by one simulate call."""
    snn, x = build(args.model, args.mem_method, args.batch, "cpu")
    with open("/proc/self/statm") as f:
        base = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    msat.simulate(snn, x, args.T, chunk=args.chunk)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_mb": (peak - base) / 2**20}


def _child(args: argparse.Namespace, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--model", args.model, "--batch", str(args.batch), "--chunk", str(args.chunk),
           "--threads", str(args.threads), "--rounds", str(args.rounds), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_cpu(args: argparse.Namespace) -> None:
    print(f"model={args.model} device=cpu B={args.batch} T={args.T} chunk={args.chunk} threads={args.threads} "
          f"rounds={args.rounds} torch={torch.__version__}")
    for alloc, label in (("plain", "plain msat.simulate (no allocator setting)"),
                         ("tuned", "after msat.simulation.tune_cpu_allocator()")):
        flags = (["--naive"] if args.naive else []) + (["--fused"] if args.fused and alloc == "plain" else [])
        med = _child(args, "--T", str(args.T), "--_speed", alloc, *flags)
        base = min(med[k] for k in DENSE)
        print(f" {label} (x dense: to the faster dense layout):")
        for k, v in med.items():
            print(f"  {k:32s} {v:8.3f} s   {v / base:6.3f} x dense   {args.batch * args.T / v:10.1f} image-steps/s")
    if args.skip_memory:
        return
    Ts = (args.T, 2 * args.T, 8 * args.T)
    for method in ("if_max", "msat"):
        mb = [_child(args, "--T", str(T), "--_memory", "--mem-method", method)["peak_mb"] for T in Ts]
        print(f"  peak memory of simulate ({method:6s}, chunk={args.chunk}): " +
              "   ".join(f"T={T}: {m:7.1f} MB" for T, m in zip(Ts, mb)) + f"   T={Ts[2]}/T={Ts[0]}: {mb[2] / mb[0]:5.3f}")


# ----------------------------------------------------------------------------- GPU

def _amp(precision: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def _tf32(precision: str) -> None:
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"


def gpu_case(model_name: str, method: str, precision: str, args: argparse.Namespace, images: torch.Tensor) -> dict:
    snn, _ = build(model_name, method, args.batch, "cuda")
    batches = images.split(args.batch)
    opts = EngineOptions(precision=precision)

    def run_sim() -> torch.Tensor:
        preds = []
        for x in batches:
            out = msat.simulate(snn, x, args.T, chunk=args.chunk, options=opts)
            preds.append(out.sum(0).argmax(-1))
        return torch.cat(preds)

    def run_dense() -> None:
        _tf32(precision)
        with torch.no_grad(), _amp(precision):
            for x in batches:
                x = x.contiguous(memory_format=torch.channels_last)
                for _ in range(args.T):
                    snn.ann_forward(x)

    def timed(fn) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000.0

    msat.simulate(snn, batches[0], args.T, chunk=args.chunk, options=opts)     # warm-up: layout, kernels, graph capture
    msat.simulate(snn, batches[0], args.T, chunk=args.chunk, options=opts)
    run_dense()
    t_sim, t_dense, got = [], [], {}
    for _ in range(args.repeats):                                        # interleaved: dense, simulate, ...
        t_dense.append(timed(run_dense))
        t_sim.append(timed(lambda: got.update(preds=run_sim())))
    mem = {}
    for T in (64, args.T):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        msat.simulate(snn, batches[0], T, chunk=args.chunk, options=opts)
        torch.cuda.synchronize()
        mem[T] = (torch.cuda.max_memory_allocated() - base) / 2**20
    wall, dense = statistics.median(t_sim), statistics.median(t_dense)
    return {"wall": wall, "dense": dense, "ratio": wall / dense, "isps": len(images) * args.T / wall,
            "mem": mem, "preds": got["preds"].cpu()}


def run_gpu(args: argparse.Namespace) -> None:
    dev = torch.cuda.get_device_name(0)
    print(f"device={dev} torch={torch.__version__} images={args.images} B={args.batch} T={args.T} "
          f"chunk={args.chunk} repeats={args.repeats} date={time.strftime('%Y-%m-%d')}")
    g = torch.Generator(device="cuda").manual_seed(7)
    images = torch.rand(args.images, 3, 32, 32, generator=g, device="cuda")
    print("| model | method | precision | wall (s) | dense bound (s) | x dense | image-steps/s | "
          f"peak MB T=64 | peak MB T={args.T} | agreement with fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model_name in args.models.split(","):
        for label, method in METHODS.items():
            ref = None
            for precision in args.precisions.split(","):
                r = gpu_case(model_name, method, precision, args, images)
                if precision == "fp32":
                    ref = r["preds"]
                agree = "-" if ref is None or precision == "fp32" else f"{100 * (r['preds'] == ref).float().mean():.2f} %"
                print(f"| {model_name} | {label} | {precision} | {r['wall']:.2f} | {r['dense']:.2f} | "
                      f"{r['ratio']:.3f} | {r['isps']:.3g} | {r['mem'][64]:.0f} | {r['mem'][args.T]:.0f} | {agree} |",
                      flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--model", default="vgg16", help="CPU: the model")
    p.add_argument("--models", default="vgg16,resnet20", help="CUDA: the models")
    p.add_argument("--precisions", default="fp32,tf32,bf16", help="CUDA: the precisions")
    p.add_argument("--batch", type=int, default=None, help="default 16 on CPU, 500 on CUDA")
    p.add_argument("--T", type=int, default=None, help="default 32 on CPU, 256 on CUDA")
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="CPU: interleaved rounds")
    p.add_argument("--repeats", type=int, default=3, help="CUDA: repeats of each timed run")
    p.add_argument("--images", type=int, default=10000, help="CUDA: images per timed run")
    p.add_argument("--naive", action="store_true", help="CPU: add the naive per-step loop")
    p.add_argument("--fused", action="store_true",
                   help="CPU: add simulate(fused=True) (compiled neuron steps; the compile is in the warm-up)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--_speed", choices=("plain", "tuned"), help=argparse.SUPPRESS)
    p.add_argument("--_memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mem-method", default="if_max", help=argparse.SUPPRESS)
    args = p.parse_args()
    cuda = args.device == "cuda"
    args.batch = args.batch or (500 if cuda else 16)
    args.T = args.T or (256 if cuda else 32)
    torch.set_num_threads(args.threads)
    if cuda:
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda: no CUDA device is available")
        run_gpu(args)
    elif args._speed:
        if args._speed == "tuned":
            msat.simulation.tune_cpu_allocator()
        print(json.dumps(cpu_speed(args)))
    elif args._memory:
        print(json.dumps(cpu_memory(args)))
    else:
        run_cpu(args)


if __name__ == "__main__":
    main()
