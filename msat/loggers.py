"""RunLogger: metrics to local JSONL/CSV files always, and to Weights & Biases when configured.

W&B runs ``offline`` by default (files under ``<run_dir>/wandb/offline-run-*``, sync later with
``wandb sync``); ``mode: online`` needs an API key, and a missing key or a failed login falls back
to offline with a warning, so a run never stops or hangs for want of a network.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import netrc
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

from .utils import UserError, atomic_write_text, to_plain, write_json

log = logging.getLogger(__name__)

BACKENDS = ("wandb", "none")
MIN_FREE_BYTES = 1 << 20            # below this the W&B offline data of a finished run may be cut short
WANDB_MODES = ("offline", "online", "disabled")


def _plain(v: Any) -> Any:
    """Tensors / numpy scalars -> Python numbers, so metrics serialize everywhere."""
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
        return v.item()
    return v


def _has_wandb_credentials() -> bool:
    """An API key in the environment or in ~/.netrc for the configured host (no prompt, no network)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class RunLogger:
    """Log per-step metrics, tables and a summary for one run.

    Local files: ``metrics.jsonl`` (one JSON object per :meth:`log`), ``metrics.csv``,
    ``summary.json`` and ``<table>.csv``. With ``local=True`` (training) they are written into
    ``run_dir`` as they come, each atomically; with ``local=False`` (convert_eval, whose outputs are
    committed as one set) they are kept in memory and :meth:`write_local` writes them where asked.
    ``keep_until``: continuing a run in the same directory keeps its earlier rows up to this step
    (a resumed training); otherwise the run starts a fresh log.
    ``cfg_logger`` is the ``logger`` config node (``msat.config.LoggerConfig``).
    ``enabled=False`` (non-zero DDP ranks) makes every method a no-op.
    Use as a context manager: leaving the block always calls :meth:`finish`.
    """

    def __init__(self, cfg_logger: Mapping | None, run_dir: str | os.PathLike,
                 config_dict: Mapping | None = None, enabled: bool = True, local: bool = True,
                 keep_until: int | None = None):
        cfg = dict(to_plain(cfg_logger) or {})
        self.backend = str(cfg.get("backend", "none"))
        if self.backend not in BACKENDS:
            raise UserError(f"unknown logger backend {self.backend!r}; valid: {', '.join(BACKENDS)}")
        self.enabled = enabled
        self.local = local
        self.verbose = bool(cfg.get("verbose", False))
        self.run_dir = Path(run_dir)
        self.wandb_run = None
        self.wandb_mode: str | None = None
        self.summary: dict[str, Any] = {}
        self.tables: dict[str, tuple[list, list]] = {}
        self._rows: list[dict] = []
        self._finished = not enabled
        if not enabled:
            return
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        if local:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if keep_until is not None and self.jsonl_path.exists():
                rows = [json.loads(line) for line in self.jsonl_path.read_text().splitlines() if line.strip()]
                self._rows = [r for r in rows if int(r.get("step", 0)) <= keep_until]
            self._write_rows(self.run_dir)
        if self.backend == "wandb":
            self._init_wandb(cfg, dict(config_dict or {}))

    # -------------------------------------------------------------- W&B
    def _init_wandb(self, cfg: dict, config: dict) -> None:
        mode = str(cfg.get("mode", "offline"))
        if mode not in WANDB_MODES:
            raise UserError(f"unknown logger.mode {mode!r}; valid: {', '.join(WANDB_MODES)}")
        import wandb

        kwargs = dict(project=cfg.get("project") or "msat", entity=cfg.get("entity"),
                      group=cfg.get("group"), name=cfg.get("run_name"), job_type=cfg.get("job_type"),
                      notes=cfg.get("notes"), tags=list(cfg.get("tags") or []) or None,
                      config=config, dir=str(self.run_dir))
        timeout = float(cfg.get("init_timeout", 30))
        quiet = not self.verbose                     # W&B's own console lines: one summary line of ours instead

        def settings() -> Any:
            return wandb.Settings(init_timeout=timeout, silent=quiet, quiet=quiet)

        if mode == "online":
            if not _has_wandb_credentials():
                log.warning("W&B online requested but no API key found (WANDB_API_KEY or `wandb login`); "
                            "logging offline to %s/wandb", self.run_dir)
                mode = "offline"
            else:
                try:
                    self.wandb_run = wandb.init(mode="online", settings=settings(), **kwargs)
                except Exception as e:  # login refused, no network, timeout
                    log.warning("W&B online init failed (%s: %s); logging offline to %s/wandb",
                                type(e).__name__, str(e).splitlines()[0] if str(e) else "", self.run_dir)
                    mode = "offline"
                    try:
                        wandb.finish(exit_code=1)
                    except Exception:  # nothing to finish
                        pass
        if self.wandb_run is None:
            self.wandb_run = wandb.init(mode=mode, settings=settings(), **kwargs)
        self.wandb_mode = mode

    # -------------------------------------------------------------- logging
    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record ``metrics`` at ``step`` (e.g. the epoch) locally and in W&B."""
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._rows.append(row)
        if self.local:
            self._write_rows(self.run_dir)
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in row.items() if k != "step"}, step=int(step))

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table: ``<name>.csv`` and a W&B Table of the same name."""
        if not self.enabled:
            return
        rows = [[_plain(v) for v in r] for r in rows]
        for r in rows:
            if len(r) != len(columns):
                raise ValueError(f"table {name!r}: row {r} has {len(r)} values for {len(columns)} columns")
        self.tables[name] = (list(columns), rows)
        if self.local:
            atomic_write_text(self.run_dir / f"{name}.csv", csv_text(columns, rows))
        if self.wandb_run is not None:
            import wandb

            try:
                self.wandb_run.log({name: wandb.Table(columns=list(columns), data=rows)})
            except OSError as e:   # W&B's media file could not be written (a full disk): finish() reports it
                log.error("W&B table %s not written: %s", name, e)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """Merge ``summary`` into ``summary.json`` and the W&B run summary."""
        if not self.enabled:
            return
        self.summary.update({k: _plain(v) for k, v in summary.items()})
        if self.local:
            write_json(self.run_dir / "summary.json", self.summary)
        if self.wandb_run is not None:
            self.wandb_run.summary.update(dict(summary))

    def _write_rows(self, folder: Path) -> None:
        atomic_write_text(folder / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self._rows))
        atomic_write_text(folder / "metrics.csv", _to_csv(self._rows))

    def write_local(self, folder: str | os.PathLike) -> None:
        """Write every local file (rows, tables, summary) into ``folder``."""
        if not self.enabled:
            return
        folder = Path(folder)
        self._write_rows(folder)
        for name, (columns, rows) in self.tables.items():
            atomic_write_text(folder / f"{name}.csv", csv_text(columns, rows))
        write_json(folder / "summary.json", self.summary)

    def finish(self, exit_code: int = 0) -> None:
        """Close the W&B run (idempotent) and say in one line where its data is; data W&B could not write
        (a full disk) is reported, not left to look complete."""
        if self._finished:
            return
        self._finished = True
        if self.wandb_run is None:
            return
        run_dir = Path(self.wandb_run.dir).parent if getattr(self.wandb_run, "dir", None) else self.run_dir / "wandb"
        problem = None
        try:
            self.wandb_run.finish(exit_code=exit_code)
        except Exception as e:  # the W&B service failed (disk full, killed)
            problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if self.wandb_mode == "offline":
            free = shutil.disk_usage(run_dir if run_dir.exists() else self.run_dir).free if self.run_dir.exists() else 0
            data = list(run_dir.glob("*.wandb")) if run_dir.exists() else []
            if problem is None and (not data or data[0].stat().st_size == 0):
                problem = "no W&B data file was written"
            elif problem is None and free < MIN_FREE_BYTES:
                problem = f"the disk is full ({free} bytes free), so the data may be cut short"
            if problem:
                log.error("W&B offline data in %s is incomplete: %s", run_dir, problem)
            else:
                log.info("W&B: offline run in %s (upload with: wandb sync %s)", run_dir, run_dir)
        elif problem:
            log.error("W&B run did not finish cleanly (%s)", problem)

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.finish(exit_code=0 if exc_type is None else 1)
        return False


def csv_text(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV of a table (header + rows)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue()


def _to_csv(rows: list[dict]) -> str:
    """CSV of dict rows; columns are the union of keys in first-seen order."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
