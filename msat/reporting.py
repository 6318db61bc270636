"""Reporting: markdown tables, plots (matplotlib Agg), run summaries, the reference numbers.

The reference CSVs (the paper's tables and the authors' published curves and layer statistics)
ship with the package (``msat/reference``, a copy of ``../shared/reference``);
``MSAT_SHARED_DIR`` points elsewhere. When they are absent every reference column reads ``n/a``.
"""
from __future__ import annotations

import csv
import functools
import io
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .utils import atomic_write_bytes

NA = "n/a"
AUTHORS_DATASET = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "imagenet": "ImageNet"}
AUTHORS_GROUP = "parameters_group1"   # the authors' first hyper-parameter group (paper Table 2 values)
# Where another group holds the runs the paper reports: CIFAR-10 / ResNet20 group5 (calibration on
# 200 images) gives Table 7 exactly (ANS 1.972 / 1.558, accuracy 93.30 / 94.02 at T = 32).
AUTHORS_GROUPS = {("cifar10", "resnet20"): "parameters_group5"}


# ----------------------------------------------------------------------------- reference data

BUNDLED_REFERENCE = Path(__file__).resolve().parent / "reference"


def shared_dir() -> Path:
    """``$MSAT_SHARED_DIR`` or ``<repo>/../shared`` (the project's shared folder)."""
    env = os.environ.get("MSAT_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def reference_dir() -> Path:
    """Where the reference CSVs are read: ``$MSAT_SHARED_DIR/reference`` when that variable is
    set, else the copy shipped with the package (``msat/reference``, kept equal to
    ``../shared/reference`` by a test)."""
    return shared_dir() / "reference" if os.environ.get("MSAT_SHARED_DIR") else BUNDLED_REFERENCE


@functools.lru_cache(maxsize=None)
def _read_csv(path: str) -> tuple[dict, ...]:
    with open(path, newline="", encoding="utf-8") as f:
        return tuple(csv.DictReader(f))


def load_reference(name: str) -> list[dict] | None:
    """Rows of ``reference/<name>.csv`` as dicts of strings; None when the file is absent."""
    path = reference_dir() / f"{name}.csv"
    return [dict(r) for r in _read_csv(str(path))] if path.is_file() else None


def load_anchors() -> list[dict]:
    """The rival methods' published numbers (``anchors/baselines.csv`` of the shared folder, shipped as
    ``msat/reference/baselines.csv``): method, source, dataset, model, ann_acc, T, snn_acc, note."""
    path = shared_dir() / "anchors" / "baselines.csv" if os.environ.get("MSAT_SHARED_DIR") else \
        BUNDLED_REFERENCE / "baselines.csv"
    return [dict(r) for r in _read_csv(str(path))] if path.is_file() else []


def paper_row(table: int | str, method: str, dataset: str, model: str) -> dict | None:
    """The paper's row (``paper_tables.csv``) for one method / dataset / model, or None."""
    for r in load_reference("paper_tables") or []:
        if (r["table"], r["method"], r["dataset"], r["model"]) == (str(table), method, dataset, model):
            return r
    return None


def parse_note(note: str | None) -> dict[str, str]:
    """``"T16=- T32=93.71 ANS=2.92"`` -> ``{"T16": "-", "T32": "93.71", "ANS": "2.92"}``."""
    return dict(re.findall(r"(\w+)=(\S+)", note or ""))


def authors_run_name(dynamics: str, neuron: Mapping, sc: Mapping) -> str:
    """The authors' run name for a method's dynamics and neuron/sc config:
    ``snn_VthHand-1.0_useDET_True_useDTT_True_useSC_False`` (MSAT) or ``snn_VthHand0.2_...`` (fixed k)."""
    msat = dynamics == "msat"
    vth = "-1.0" if msat else f"{float(neuron.get('k', 1.0))}"
    det = bool(msat and neuron.get("use_det", True))
    dtt = bool(msat and neuron.get("use_dtt", True))
    return f"snn_VthHand{vth}_useDET_{det}_useDTT_{dtt}_useSC_{bool(sc.get('enabled', False))}"


def authors_group(dataset: str, model: str) -> str:
    """The authors' hyper-parameter group whose runs the paper reports for this dataset / model."""
    return AUTHORS_GROUPS.get((dataset, model), AUTHORS_GROUP)


def authors_curve(dataset: str, model: str, run: str, group: str | None = None) -> dict[int, float] | None:
    """The authors' accuracy (%) by T for one run (``authors_accuracy_curves.csv``), or None."""
    ds = AUTHORS_DATASET.get(dataset, dataset)
    group = group or authors_group(dataset, model)
    for r in load_reference("authors_accuracy_curves") or []:
        if (r["dataset"], r["model"], r["run"]) == (ds, model, run) and r["param_group"] in (group, ""):
            return {int(k[1:]): float(v) for k, v in r.items() if re.fullmatch(r"T\d+", k) and v not in ("", None)}
    return None


def authors_layer_stat(dataset: str, model: str, run: str, metric: str,
                       group: str | None = None) -> dict[int, float] | None:
    """The authors' per-layer ``metric`` (e.g. SINRate, avg_error_spikenum at t=16) by layer index, or None."""
    ds = AUTHORS_DATASET.get(dataset, dataset)
    group = group or authors_group(dataset, model)
    out: dict[int, float] = {}
    for r in load_reference("authors_layer_stats") or []:
        if (r["dataset"], r["model"], r["param_group"], r["run"], r["metric"]) == (ds, model, group, run, metric):
            out.setdefault(int(r["layer"]), float(r["value"]))   # first block of a repeated run
    return out or None


# ----------------------------------------------------------------------------- formatting

def fmt(v: Any, nd: int = 2) -> str:
    """A number with ``nd`` decimals, a string as is, ``n/a`` for None / empty."""
    if v is None or v == "":
        return NA
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)):
        return f"{v:.{nd}f}" if isinstance(v, float) else str(v)
    return str(v)


def pct(v: float | None, nd: int = 2) -> str:
    """A fraction in [0, 1] as a percentage string (``n/a`` for None)."""
    return NA if v is None else f"{100.0 * v:.{nd}f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are formatted with :func:`fmt`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        if len(r) != len(headers):
            raise ValueError(f"row {list(r)} has {len(r)} cells for {len(headers)} headers")
        lines.append("| " + " | ".join(fmt(c) for c in r) + " |")
    return "\n".join(lines) + "\n"


def run_summary(metrics: Mapping, steps: Sequence[int]) -> str:
    """The stdout summary of one run: accuracy at the reported T, loss vs the ANN, lossless steps, energy."""
    ann, acc = metrics["ann_acc"], metrics["acc"]
    rows = [[t, pct(acc[t - 1]), pct(ann - acc[t - 1])] for t in steps]
    e = metrics["energy"]
    stl = metrics["steps_to_lossless"]
    return (f"\n{metrics.get('name') or 'run'}: ANN accuracy {pct(ann)} % on {metrics['timing']['images']} "
            f"test samples\n" + markdown_table(["T", "SNN acc (%)", "loss vs ANN (pp)"], rows)
            + f"steps to lossless (tol {metrics.get('lossless_tol', 0.0)}): {stl if stl is not None else 'never'}"
            + f" | energy ratio SNN/ANN {e['ratio']:.3f} | mean firing rate {e['mean_firing_rate']:.4f}\n")


# ----------------------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def draw_curves(ax: Any, series: Mapping[str, Sequence[float]], title: str = "", ylabel: str = "accuracy (%)",
                hlines: Mapping[str, float] | None = None, refs: Mapping[str, Mapping[int, float]] | None = None,
                logx: bool = True, shade_before: int | None = None, legend_outside: bool = False) -> None:
    """Lines over t = 1..len (``series``), dashed horizontal lines (``hlines``, e.g. the ANN), dotted
    markers at sparse T (``refs``, e.g. the authors' curves) and a green band for t < ``shade_before``
    (SC steps); ``legend_outside`` puts the legend right of the axes (many series)."""
    for label, ys in series.items():
        ax.plot(range(1, len(ys) + 1), list(ys), label=label)
    for (label, y), color in zip((hlines or {}).items(), ("black", "gray", "brown")):
        ax.axhline(y, linestyle="--", color=color, linewidth=1, label=label)
    for label, pts in (refs or {}).items():
        ts = sorted(pts)
        ax.plot(ts, [pts[t] for t in ts], linestyle=":", marker="o", markersize=3, label=label)
    if shade_before:
        ax.axvspan(1, shade_before, color="green", alpha=0.12, label=f"SC (t < {shade_before})")
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("time step t")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if legend_outside:
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=6)


def plot_panels(panels: Sequence[Mapping[str, Any]], path: str | os.PathLike, ncols: int = 2) -> Path:
    """One subplot per panel; each panel is the keyword arguments of :func:`draw_curves`."""
    plt = _plt()
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.8 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        draw_curves(ax, **panel)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    with warnings.catch_warnings():        # a long legend outside the axes cannot fit: bbox_inches="tight" takes it
        warnings.filterwarnings("ignore", message="Tight layout not applied", category=UserWarning)
        fig.tight_layout()
    return save_figure(fig, path)


def plot_curves(series: Mapping[str, Sequence[float]], path: str | os.PathLike, **kwargs: Any) -> Path:
    """One panel of :func:`draw_curves` saved as PNG."""
    return plot_panels([{"series": series, **kwargs}], path)


def plot_acc_vs_T(metrics: Mapping, path: str | os.PathLike) -> Path:
    """Accuracy (%) after t steps, with the ANN accuracy dotted."""
    return plot_curves({"SNN": [100 * a for a in metrics["acc"]]}, path, title=metrics.get("name") or "",
                       hlines={"ANN": 100 * metrics["ann_acc"]})


def plot_layer_curves(curves: Mapping[str, Sequence[float]], path: str | os.PathLike, ylabel: str,
                      title: str = "") -> Path:
    """One line per layer over t (e.g. SIN ratio, paper Fig. 2)."""
    return plot_curves({n: c for n, c in curves.items()}, path, title=title, ylabel=ylabel)


def plot_firing_rate(layers: Sequence[Mapping], path: str | os.PathLike, title: str = "",
                     ref: Sequence[float] | None = None) -> Path:
    """Bars of the firing rate per layer (paper Fig. 7), the reference as markers if given."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(layers) + 2), 3.5))
    xs = range(1, len(layers) + 1)
    ax.bar(xs, [r["firing_rate"] for r in layers], label="measured")
    if ref is not None:
        ax.plot(list(xs)[:len(ref)], list(ref), "k_", markersize=14, label="paper")
    ax.set_xlabel("spiking layer")
    ax.set_ylabel("firing rate (spikes / neuron / step)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


