"""SNN Calibration (Li, Deng, Dong, Gong, Gu, ICML 2021, "A free lunch from ANN: towards efficient,
accurate spiking neural networks calibration"; code yhhhli/SNN_Calibration).

Both pipelines calibrate for one simulation length ``calib_T`` (``method.calib_T``, default the run's T)
and run IF neurons with soft reset:

- thresholds: for each layer, the candidate ``theta_i = max * (1 - 0.01 i)``, i = 0..94, that minimizes
  the mean squared error between the ANN activation a and its T-step rate code
  ``floor(clip(a / theta * T, 0, T)) * theta / T`` (``find_threshold_mse``; per channel with
  ``calib.per_channel``); over several calibration batches the per-batch values are averaged with
  momentum 0.9, as the code's ``DataSaverHook`` does;
- the shift: an input current theta / (2 T) added at every step (``enable_shift``), which turns the
  rate code's floor into rounding;
- ``snn_calib_light``: bias calibration. Layer by layer, in execution order, the SNN is simulated for
  calib_T steps on the first calibration batch and the per-channel mean (over batch and positions) of
  the layer's time-averaged output is matched to the unmodified ANN's: the input current of the
  layer's neurons gains ``mean(ANN) - mean(SNN)`` (``emp_bias_corr``);
- ``snn_calib_advanced``: potential calibration. The same loop sets a per-element initial potential
  ``V(-1) = (mean_batch(ANN) - mean_batch(SNN)) * T`` instead (``correct_mempot=True``).

Where we follow the code rather than the paper: the candidates (95, from the max), the EMA over batches,
the closed-form corrections (no iterative optimization). Where we differ: the code corrects the bias of
the conv before each ReLU; we add the correction to the neuron's input current, which is the same for a
conv -> ReLU chain and also serves a ReLU after a residual add (the code has special residual modules).
The code's networks use average pooling only; on a max-pool network our rows run LIPool
(``pool=lipool``), and their label says so.

The calibration data (``method.protocol``):

- ``shared`` (the default): the run's calibration batches, shared by every method (``calib.*``): the
  thresholds from all of them, the corrections on the first;
- ``official``: the code's protocol (``CIFAR/main_calibration.py``): ``get_maximum_activation(...,
  momentum=0.9, iters=5)`` reads 7 batches of 128 augmented training images of the shuffled training
  loader (its loop breaks after ``i > iters``), and ``bias_corr_model`` corrects on one fresh batch of the
  same loader. It fixes ``calib.batches=8, calib.batch_size=128, calib.transform=train,
  calib.shuffle=true`` (``fixed_groups``): the first 7 batches give the thresholds, the 8th the
  corrections. The code reports the mean of 5 seeds (``seed + i``, i < 5): one run here is one seed
  (``seed=``, which orders and augments the calibration batches); ``make compare-methods`` runs the
  seeds of ``method.seeds`` and reports their mean +- sd.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, replace
from typing import Optional

import torch

from ..config import ConfigError, MethodConfig, param
from ..simulation import Observer, simulate
from ..utils import ConversionError, Interrupted, StopSignals, hydra_run_dir, resume_command
from .registry import register_method
from .base import CalibContext, Method

Tensor = torch.Tensor


@dataclass
class SNNCalibConfig(MethodConfig):
    name: str = param("snn_calib_light", "the conversion method")
    calib_T: Optional[int] = param(None, "the simulation length calibrated for (null: the run's T)")
    candidates: int = param(95, "threshold candidates theta_i = max * (1 - 0.01 i), i < candidates (<= 100)")
    momentum: float = param(0.9, "EMA momentum of the per-batch thresholds over calibration batches")
    shift: bool = param(True, "add theta / (2 T) to the input current at every step")
    protocol: str = param("shared", "calibration data: shared (the run's calibration batches, every method's) | "
                          "official (the code's: 7 augmented training batches of 128 for the thresholds, a fresh "
                          "one for the corrections; fixes calib.*)", ("shared", "official"))
    seeds: int = param(5, "official protocol: the seeds make compare-methods averages (the code's 5); one run is "
                       "one seed (seed=)")

    def check(self, where: str = "method") -> None:
        if self.calib_T is not None and self.calib_T < 1:
            raise ConfigError(f"{where}.calib_T must be >= 1, got {self.calib_T}")
        if not 1 <= self.candidates <= 100:
            raise ConfigError(f"{where}.candidates must be in 1..100, got {self.candidates}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"{where}.momentum must be in [0, 1), got {self.momentum}")
        if self.seeds < 1:
            raise ConfigError(f"{where}.seeds must be >= 1, got {self.seeds}")

    def resolve(self, T: Optional[int]) -> "SNNCalibConfig":
        if self.calib_T is not None:
            return self
        if T is None:
            raise ConfigError("method.calib_T defaults to the run's T: set method.calib_T or give T")
        return replace(self, calib_T=T)


# the official protocol's calibration data (CIFAR/main_calibration.py: batch 128, get_maximum_activation iters=5)
OFFICIAL_THRESHOLD_BATCHES = 7
OFFICIAL_BATCH_SIZE = 128


def stop_requested() -> Optional[int]:
    """The signal (SIGINT / SIGTERM) that the run's :class:`msat.utils.StopSignals` caught, if any: the handler
    installed in this process is read, so the calibration loops need no handle of the run (a cheap check)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        owner = getattr(signal.getsignal(sig), "__self__", None)
        if isinstance(owner, StopSignals) and owner.requested:
            return owner.requested
    return None


def check_stop(where: str) -> None:
    """Raise :class:`Interrupted` with the resume line once a stop was requested: a long calibration (calib_T in
    the hundreds) honours SIGTERM within a chunk of steps instead of after the whole calibration."""
    signum = stop_requested()
    if signum is None:
        return
    run_dir = hydra_run_dir()
    cmd = resume_command("resume=true", *([f"hydra.run.dir={run_dir}"] if run_dir is not None else []))
    raise Interrupted(f"{signal.Signals(signum).name}: stopped while {where}, before the first test batch, so "
                      f"nothing was saved; resume with: {cmd}", signum)


def _channel_view(x: Tensor) -> Tensor:
    """(B, C, ...) -> (C, B*...)."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def mmse_threshold(a: Tensor, T: int, candidates: int = 95, per_channel: bool = False) -> Tensor:
    """The threshold among ``max * (1 - 0.01 i)`` minimizing the mean squared error of the T-step
    rate code of the activations ``a`` (B, ...): () per layer, (C, 1, ...) per channel."""
    def code(theta: Tensor) -> Tensor:
        return torch.floor(torch.clamp(a / theta * T, 0, T)) * theta / T

    if per_channel:
        mx = _channel_view(a).amax(1).view(1, -1, *([1] * (a.dim() - 2)))        # (1, C, 1, ...)
        best, best_err = mx.clone(), torch.full_like(mx, float("inf"))
        for i in range(candidates):
            theta = mx * (1.0 - 0.01 * i)
            err = _channel_view((a - code(theta.clamp_min(1e-12))) ** 2).mean(1).view_as(mx)
            better = err < best_err
            best, best_err = torch.where(better, theta, best), torch.where(better, err, best_err)
        return best[0]                                                            # (C, 1, ...)
    mx = a.max()
    best, best_err = mx.clone(), float("inf")
    for i in range(candidates):
        theta = mx * (1.0 - 0.01 * i)
        if float(theta) <= 0:
            break
        err = float(((a - code(theta)) ** 2).mean())
        if err < best_err:
            best, best_err = theta, err
    return best


class _Rate(Observer):
    """The summed spike counts of one layer over a simulation."""

    def __init__(self, name: str):
        self.name, self.total = name, None

    def on_spikes(self, name: str, spikes: Tensor, t0: int) -> None:
        check_stop(f"calibrating layer {self.name} (SNN Calibration)")
        if name == self.name:
            s = spikes.sum(0)
            self.total = s if self.total is None else self.total + s


def _channel_mean(x: Tensor) -> Tensor:
    """Mean over every dim but the channel (dim 1): (C, 1, ...) per sample."""
    dims = [d for d in range(x.dim()) if d != 1]
    return x.mean(dim=dims).view(-1, *([1] * (x.dim() - 2)))


@register_method
class SNNCalibLight(Method):
    """SNN Calibration, light: MMSE thresholds, the theta/(2T) shift, per-channel bias calibration."""

    name = "snn_calib_light"
    label = "SNN Calibration, light"
    citation = "Li et al., ICML 2021"
    params = SNNCalibConfig
    # calibrated for T=8 with both protocols (the official one on its seeds), then for longer T
    variants = ({"method.calib_T": 8}, {"method.calib_T": 8, "method.protocol": "official"},
                {"method.calib_T": 32}, {"method.calib_T": 256})
    headline = 2
    potential = False
    max_pools = False                      # set by thresholds(): the network has spiking (max) pools
    threshold_batches = (0, 0)             # set by thresholds(): how many batches of how many images it read

    @classmethod
    def fixed_groups(cls, params: SNNCalibConfig) -> dict:
        if params.protocol != "official":
            return {}
        return {"calib": {"batches": OFFICIAL_THRESHOLD_BATCHES + 1, "batch_size": OFFICIAL_BATCH_SIZE,
                          "transform": "train", "shuffle": True}}

    @classmethod
    def run_seeds(cls, params: SNNCalibConfig) -> int:
        return params.seeds if params.protocol == "official" else 1

    def describe(self) -> str:
        p = self.params
        n, size = self.threshold_batches
        data = (f"official protocol: {n} augmented training batch{'es' if n != 1 else ''} of {size}, corrections "
                "on a fresh one" if p.protocol == "official" else "shared calibration batch")
        pools = "; LIPool on max pooling (the official code has average pooling only)" \
            if self.max_pools and self.cfg.pool.name == "lipool" else ""
        return f"{self.label} (calib. T={p.calib_T}, {data}{pools})"

    def _split(self, ctx: CalibContext) -> tuple[list[Tensor], Tensor]:
        """(the threshold batches, the correction batch): official: all but the last (7 of 8) and the last;
        shared: every batch and the first."""
        if self.params.protocol != "official":
            return ctx.batches, ctx.batches[0]
        if len(ctx.batches) < 2:
            raise ConversionError(f"SNN Calibration's official protocol needs at least 2 calibration batches (the "
                                  f"thresholds' and a fresh one for the corrections), got {len(ctx.batches)}: the "
                                  f"training split holds fewer than {2 * int(ctx.batches[0].shape[0])} images")
        return ctx.batches[:-1], ctx.batches[-1]

    def thresholds(self, ctx: CalibContext) -> dict:
        p, per_channel = self.params, ctx.cfg.calib.per_channel
        self.max_pools = bool(ctx.pools)
        batches = self._split(ctx)[0]
        self.threshold_batches = (len(batches), int(batches[0].shape[0]))
        found: dict = {}

        def record(neuron, x: Tensor) -> None:
            check_stop(f"choosing the threshold of layer {neuron.name} (SNN Calibration)")
            theta = mmse_threshold(neuron.forward(x.detach()), p.calib_T, p.candidates, per_channel)
            found[neuron] = theta if neuron not in found else p.momentum * found[neuron] + (1 - p.momentum) * theta

        ctx.activations(record, batches)
        return found

    def after_convert(self, snn, ctx: CalibContext) -> None:
        T, x = self.params.calib_T, self._split(ctx)[1]
        neurons = [m for _, m in snn.neuron_layers()]
        for m in neurons:
            if self.params.shift:
                m.set_input_bias(m.theta * (0.5 / T))
        ann = {n: torch.relu(a) if m.ann_act is None else m.ann_act(a)
               for (n, a), m in zip(snn.ann_preactivations(x).items(), neurons)}
        ctx.cost.ann_forwards += 1
        for m in neurons:                                   # layer by layer: earlier layers already calibrated
            rate = _Rate(m.name)
            simulate(snn, x, T, observers=(rate,))
            ctx.cost.sim_steps += T
            snn_out = rate.total * (self.cfg.neuron.k * m.theta) / T             # (B, ...) time-averaged output
            if self.potential:
                v0 = (ann[m.name].mean(0) - snn_out.mean(0)) * T                  # activation units, per element
                m.set_v0(v0 / torch.where(m.theta > 0, m.theta, torch.ones_like(m.theta)))
            else:
                delta = _channel_mean(ann[m.name]) - _channel_mean(snn_out)         # (C, 1, ...)
                m.set_input_bias(delta if m.i_bias is None else m.i_bias + delta)
        super().after_convert(snn, ctx)


@register_method
class SNNCalibAdvanced(SNNCalibLight):
    """SNN Calibration, advanced: MMSE thresholds, the theta/(2T) shift, per-element potential calibration."""

    name = "snn_calib_advanced"
    label = "SNN Calibration, advanced"
    potential = True
