"""What the entry points share: one ``error:`` line and exit code 2 for every bad input, before any compute.

``run_cli(main, schema)`` runs a ``@hydra.main`` function. Hydra's own composition errors (an
unknown group option, a typo'd key, a value of the wrong type: 12-19 lines and exit 1 otherwise)
become one line naming the bad key with the valid keys or options, exit 2. ``exit_on_user_error``
does the same for a :class:`msat.utils.UserError` raised by the run, and removes the run directory
Hydra created for a run that was refused before it wrote anything (and the parents Hydra made for it).

``run_cli`` adds the Hydra callback :class:`SweepLockCallback` (``hydra.callbacks.msat_sweep_lock``), the earliest
place our code gets control, before Hydra makes any directory:

- a single run is checked first (:data:`RUN_CHECKS`: the config, the data sizes, the device, the checkpoint, and
  that the run directory can be made and written): a refusal leaves nothing behind;
- a multirun's launching process holds :class:`msat.runs.SweepLock` on ``hydra.sweep.dir`` from before the sweeper
  starts until every job has returned (a second multirun into it is refused in one line naming the first), and
  composes and checks every job before the first starts; a job that fails at run time is reported, the others
  still run, and the sweep ends with a table of its jobs (stdout), one ``error:`` line per failed job (stderr) and
  exit code 2.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import fcntl
import functools
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from . import config, evaluate, training
from .checkpoint import default_ckpt_path, last_ckpt_path, load_checkpoint
from .config import EvalConfig, TrainRunConfig, field_names
from .data import check_available, digits, synthetic
from .methods import get_method, list_methods
from .runs import LOCK, SweepLock
from .utils import Interrupted, UserError, file_kind, hydra_run_dir, resolve_device, to_plain

log = logging.getLogger(__name__)


def _schema_keys(schema: type, dotted: str) -> tuple[str, list[str]] | None:
    """(the group path, its valid keys) for a dotted key under the dataclass ``schema``."""
    parts = [p for p in dotted.lstrip("+~").split(".") if p]
    cls, group = schema, []
    for p in parts[:-1]:
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if p not in hints or not dataclasses.is_dataclass(hints[p]):
            break
        cls, group = hints[p], group + [p]
    if not dataclasses.is_dataclass(cls) or len(group) != len(parts) - 1:
        return None
    return ".".join(group) or "the config", [f.name for f in dataclasses.fields(cls)]


def hydra_error_line(e: BaseException, schema: type) -> str:
    """One line for a Hydra / OmegaConf composition error."""
    if isinstance(e, MissingConfigException):
        missing = e.missing_cfg_file or ""
        group, _, option = missing.rpartition("/")
        if e.options:
            return f"unknown {group or 'config'} option {option!r}; valid options: {', '.join(sorted(e.options))}"
        return str(e).splitlines()[0]
    text = str(e).strip().splitlines()
    first = text[0] if text else type(e).__name__
    cause = e.__cause__ or e.__context__
    m = re.search(r"override '([^']+)'", first) or re.search(r"override ([\w.+~]+)=", first)
    key = m.group(1) if m else None
    detail = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    if key is not None:
        key = key.lstrip("+~")
        found = _schema_keys(schema, key)
        owner = re.search(r"not in '(\w+)'", detail)
        if owner and _dataclass_named(owner.group(1)) is not None:     # e.g. a method's parameters
            found = (key.rpartition(".")[0] or "the config", field_names(_dataclass_named(owner.group(1))))
        inner = _schema_keys(schema, key + ".x")
        if "Invalid type assigned" in detail and inner is not None and inner[0] == key:
            return (f"{key} is a group of keys ({key}.<key>=value; valid keys: {', '.join(inner[1])}), not an "
                    "option; choose a conversion method with method=<name>")
        if found is not None and ("not in" in detail or "Could not override" in first and not detail):
            group, keys = found
            return f"unknown key {key!r}; valid keys of {group}: {', '.join(keys)}"
        if detail:
            return f"{key}: {detail}"
    return f"{first} {detail}".strip()


def _dataclass_named(name: str) -> type | None:
    """The config dataclass (msat.config or a method's parameters) whose class name is ``name``."""
    classes = [getattr(config, n) for n in config.__all__] + [get_method(m).params for m in list_methods()]
    return next((c for c in classes if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__name__ == name),
                None)


def _hydra_errors() -> tuple[type, ...]:
    return HydraException, OmegaConfBaseException



# ----------------------------------------------------------------------------- checks before any compute

class _State:
    """What the launching process shares between run_cli, the callback and the wrapper."""

    schema: type | None = None              # the entry point's run schema (run_cli sets it): which checks apply
    exit_code: int = 0                      # a multirun whose jobs failed ends with it
    bases: dict = {}                        # run dir -> the deepest directory that existed before Hydra made it


JOBS_ENV = "MSAT_SWEEP_JOBS"                # the file a multirun's jobs append their one-line records to
JOBS_FILE = ".msat_jobs.jsonl"


def existing_base(path: Path) -> Path:
    """The deepest ancestor of ``path`` (or ``path``) that exists: what a ``mkdir -p`` of ``path`` starts from."""
    base = Path(os.path.abspath(path))
    while not os.path.lexists(base) and base != base.parent:
        base = base.parent
    return base


def dir_problem(path: Path) -> str | None:
    """Why the directory ``path`` cannot be made or written (None when it can): an ancestor that is not a
    directory, or a place that takes no new entries (read-only, /proc); probed with a folder removed at once."""
    base = existing_base(path)
    if base.is_symlink() and not base.exists():
        return f"{base} is a symbolic link to {os.readlink(base)}, which does not exist"
    if not base.is_dir():
        return f"{base} is {file_kind(base)}, not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".msat-probe-", dir=base))
    except OSError as e:
        if e.errno == errno.ENOSPC:                  # a full disk: the writes say so, naming the space they need
            return None
        return f"{base} takes no new folders ({(e.strerror or str(e)).lower()})"
    return None


def check_dir(path: Path, what: str, keys: str) -> None:
    why = dir_problem(path)
    if why is not None:
        verb = "write into" if Path(path).is_dir() else "create"
        raise UserError(f"cannot {verb} the {what} {path}: {why}; set {keys} to a folder you can write")


def check_data_sizes(ds: Mapping) -> None:
    """Splits that would hold no items: digits' test_fraction, the synthetic datasets' n_train / n_test."""
    if ds["name"] == "digits":
        digits.check_split(ds)
    elif "n_train" in ds and "n_test" in ds:
        synthetic.check_sizes(ds)


def check_eval_run(cfg: Any) -> None:
    """convert_eval.py before any compute: the config (keys, method, model, memory), the data sizes, the device
    and the checkpoint file (that it is one: it is read later)."""
    ecfg, _ = evaluate.check_config(cfg)
    check_data_sizes(ecfg.dataset)
    resolve_device(ecfg.device)
    ckpt = Path(ecfg.ckpt) if ecfg.ckpt else default_ckpt_path(to_plain(cfg))
    if not (ckpt.is_file() and ckpt.stat().st_size > 0):
        load_checkpoint(ckpt, dataset=ecfg.dataset["name"], model=ecfg.model.name)     # its one-line refusal


def check_train_run(cfg: Any) -> None:
    """train_ann.py before any compute: the config, the data sizes, the device, where the checkpoint goes."""
    rc = training.check_config(cfg)
    check_data_sizes(rc.dataset)
    resolve_device(rc.device)
    ckpt = Path(rc.train.ckpt_path) if rc.train.ckpt_path else default_ckpt_path(to_plain(cfg))
    for p in (ckpt, last_ckpt_path(ckpt)):                   # the best checkpoint and the resume state
        if os.path.lexists(p) and not p.is_file():
            what = "a symbolic link to nothing" if p.is_symlink() and not p.exists() else file_kind(p)
            raise UserError(f"checkpoint path {p} is {what}, not a file training can write; set "
                            "train.ckpt_path to a file path (or paths.ckpt_dir to a folder)")
    why = dir_problem(ckpt.parent)
    if why is not None:
        raise UserError(f"cannot write checkpoint {ckpt}: {why}; set train.ckpt_path (or paths.ckpt_dir) to a "
                        "place you can write")


RUN_CHECKS = {EvalConfig: check_eval_run, TrainRunConfig: check_train_run}


def task_config(config: DictConfig) -> DictConfig:
    """The job's config as the task function gets it (without the ``hydra`` node)."""
    cfg = copy.deepcopy(config)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg


def error_line(e: BaseException) -> str:
    """One line for an error raised while checking a config."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, HydraException) and _State.schema is not None:
        return hydra_error_line(e, _State.schema)
    return " ".join(str(e).split("\n")[0].split()) or type(e).__name__


def refuse(line: str) -> None:
    """Hydra turns a callback's exceptions into warnings: print the one line and exit here."""
    print(f"error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(2)


SWEEP_LOCK_KEY = "hydra.callbacks.msat_sweep_lock._target_"
SWEEP_LOCK_OVERRIDE = f"++{SWEEP_LOCK_KEY}=msat.cli.SweepLockCallback"


class SweepLockCallback(Callback):
    """Hydra callback of both entry points (``hydra.callbacks.msat_sweep_lock``; the name is historical).

    - A single run (``on_run_start``): the run's checks (:data:`RUN_CHECKS`) and that its run directory can be
      made, before Hydra makes it: a refusal is one ``error:`` line, exit 2, and leaves nothing.
    - A multirun (``on_multirun_start``): that the sweep directory can be made, :class:`msat.runs.SweepLock` on
      it (a second multirun into it is refused), then every job's config composed and checked before the first
      job starts (basic sweeper); one ``error:`` line naming the first job that would fail, nothing left.
    - Each job of a multirun (``on_job_end``): one record (overrides, headline metric or error) in the sweep's
      ``.msat_jobs.jsonl``; a job that failed is logged and marked done, so the other jobs still run.
    - The multirun's end (``on_multirun_end``): a table of its jobs on stdout, one ``error:`` line per failed
      job on stderr, and the exit code (2; 1 when a job failed on something that is not a bad input).
    """

    def __init__(self) -> None:
        self.lock: SweepLock | None = None
        _drop_sweep_lock_override()                  # sys.argv as typed (resume lines, lock notes name it)

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        check = RUN_CHECKS.get(_State.schema)
        try:
            run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))
            if check is not None:
                check(task_config(config))
            check_dir(run_dir, "run directory", "hydra.run.dir (or paths.output_dir)")
        except (UserError, *_hydra_errors()) as e:
            refuse(error_line(e))
        _State.bases[Path(os.path.abspath(run_dir))] = existing_base(run_dir)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
        except Exception as e:  # a sweep dir that cannot resolve yet: the sweeper reports it
            log.warning("sweep directory not locked (%s)", " ".join(str(e).split())[:200])
            return
        try:
            check_dir(sweep_dir, "sweep directory", "hydra.sweep.dir (or paths.output_dir)")
        except UserError as e:
            refuse(str(e))
        base, had_lock = existing_base(sweep_dir), (sweep_dir / LOCK).exists()
        try:
            self.lock = SweepLock(sweep_dir).__enter__()
        except UserError as e:
            refuse(str(e))
        try:
            check_jobs(config)
        except (UserError, *_hydra_errors()) as e:
            self._release()
            remove_created(sweep_dir, base, keep_lock=had_lock)
            refuse(error_line(e))
        (sweep_dir / JOBS_FILE).unlink(missing_ok=True)      # records of an earlier sweep into this directory
        os.environ[JOBS_ENV] = str(Path(os.path.abspath(sweep_dir)) / JOBS_FILE)

    def on_job_end(self, config: Any, job_return: JobReturn, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        record = job_record(config, job_return)
        if record["error"] is not None:              # the sweep goes on, and reports the job at its end
            exc = job_return._return_value
            if not record["user"]:                   # a bad input is logged by exit_on_user_error; this is not
                log.error("job %s failed", record["num"], exc_info=(type(exc), exc, exc.__traceback__))
            job_return.status, job_return.return_value = JobStatus.COMPLETED, None
        path = os.environ.get(JOBS_ENV) or str(Path(str(config.hydra.sweep.dir)) / JOBS_FILE)
        with open(path, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        path = os.environ.pop(JOBS_ENV, None)
        self._release()
        if path is None:
            return
        records = read_records(Path(path))
        Path(path).unlink(missing_ok=True)
        if records:
            print(jobs_table(records, str(Path(path).parent)), flush=True)
        failed = [r for r in records if r["error"] is not None]
        for r in failed:
            print(f"error: job {r['num']} ({' '.join(differing(records, r)) or 'no overrides'}) failed: "
                  f"{r['error']} (log: {r['log']})", file=sys.stderr, flush=True)
        _State.exit_code = 0 if not failed else 2 if all(r["user"] for r in failed) else 1

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.__exit__()
            self.lock = None

    def __getstate__(self) -> dict:
        return {"lock": None}                        # a copy sent to a job process holds nothing


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """The overrides of every job of a basic-sweeper multirun, as the sweeper will launch them (None for
    another sweeper: it chooses its jobs as it goes)."""
    target = str(OmegaConf.select(config, "hydra.sweeper._target_") or "")
    if not target.endswith("BasicSweeper") or not GlobalHydra.instance().is_initialized():
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(OmegaConf.to_container(config.hydra.overrides.task))
    loader = GlobalHydra.instance().hydra.config_loader
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(args)
    return [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def check_jobs(config: DictConfig) -> None:
    """Compose and check every job of the multirun before the first starts; the first that would fail is one
    :class:`UserError` naming it (its overrides that differ from the other jobs')."""
    jobs = sweep_jobs(config)
    check = RUN_CHECKS.get(_State.schema)
    if not jobs or check is None:
        return
    loader = GlobalHydra.instance().hydra.config_loader
    records = [{"overrides": job} for job in jobs]
    probed: set[str] = set()
    for i, job in enumerate(jobs):
        try:
            cfg = task_config(loader.load_sweep_config(config, list(job)))
            check(cfg)
            dataset = json.dumps(to_plain(cfg.dataset), sort_keys=True, default=str)
            if dataset not in probed:            # the data of every job is there before the first starts
                check_available(cfg.dataset)
                probed.add(dataset)
        except (UserError, *_hydra_errors()) as e:
            shown = " ".join(differing(records, records[i])) or " ".join(job)
            raise UserError(f"job {i} of {len(jobs)} ({shown}): {error_line(e)}; no job was started") from None


def job_record(config: DictConfig, job_return: JobReturn) -> dict:
    """One job of a multirun: its number, overrides, folder, headline metric (convert_eval: the accuracy at
    objective_T or the last T, from its metrics.json; train_ann: the best accuracy) or its error line."""
    job_dir = Path(str(OmegaConf.select(config, "hydra.runtime.output_dir")))
    log_file = job_dir / f"{OmegaConf.select(config, 'hydra.job.name')}.log"
    record = {"num": OmegaConf.select(config, "hydra.job.num"), "overrides": list(job_return.overrides or []),
              "log": str(log_file), "error": None, "user": True, "label": "", "value": None}
    if job_return.status == JobStatus.FAILED:
        exc = job_return._return_value
        user = isinstance(exc, (UserError, OmegaConfBaseException))
        line = error_line(exc) if user else f"{type(exc).__name__}: {error_line(exc)} (traceback in the job log)"
        return {**record, "error": line, "user": user}
    T = OmegaConf.select(config, "T")
    if T is None:                                    # train_ann: the task returns the best accuracy
        value = job_return._return_value
        return {**record, "label": "best acc", "value": value if isinstance(value, (int, float)) else None}
    t = OmegaConf.select(config, "objective_T") or T
    try:
        acc = json.loads((job_dir / "metrics.json").read_text())["acc"]
        value = float(acc[int(t) - 1])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        value = None
    return {**record, "label": f"acc@T{t}", "value": value}


def read_records(path: Path) -> list[dict]:
    """The job records of a multirun, one per job (the last one of a job number), in job order."""
    out: dict = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        out[r.get("num")] = r
    return [out[k] for k in sorted(out, key=lambda n: (not isinstance(n, int), n if isinstance(n, int) else 0))]


def _override_map(overrides: Sequence[str]) -> dict:
    return dict(o.split("=", 1) if "=" in o else (o, "") for o in overrides)


def differing(records: Sequence[Mapping], record: Mapping) -> list[str]:
    """The overrides of ``record`` whose values differ between the jobs (all of them for a single job)."""
    maps = [_override_map(r["overrides"]) for r in records]
    own = _override_map(record["overrides"])
    keys = [k for k in own if len(records) == 1 or len({m.get(k) for m in maps}) > 1]
    return [f"{k}={own[k]}" for k in keys]


def _short(override: str, width: int = 48) -> str:
    """``key=value`` cut in the middle of a long value (the end of a path is what tells jobs apart)."""
    if len(override) <= width:
        return override
    key, _, value = override.partition("=")
    return f"{key}=...{value[-max(width - len(key) - 4, 8):]}"


def jobs_table(records: Sequence[Mapping], sweep_dir: str) -> str:
    """The lines a multirun ends with: one row per job, the overrides that differ and the headline metric."""
    labels = {r["label"] for r in records if r["label"]}
    metric = labels.pop() if len(labels) == 1 else "result"
    rows = [[str(r["num"]), " ".join(_short(o) for o in differing(records, r)) or "-",
             "failed" if r["error"] is not None else
             "-" if r["value"] is None else f"{100 * r['value']:.2f} %" if r["label"] else str(r["value"])]
            for r in records]
    head = ["job", "overrides", metric]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in [head, *rows]]
    failed = sum(r["error"] is not None for r in records)
    return (f"multirun {sweep_dir}: {len(records)} job{'s' * (len(records) != 1)}"
            f"{f', {failed} failed' if failed else ''}\n" + "\n".join(lines))


def remove_created(path: Path, base: Path, keep_lock: bool = False) -> None:
    """Remove ``path`` and its parents below ``base`` (what a refused multirun made) when they hold nothing
    but a lock no one holds."""
    if not keep_lock:
        (path / LOCK).unlink(missing_ok=True)
    p = Path(os.path.abspath(path))
    while p != base and base in p.parents:
        try:
            p.rmdir()                                # only if empty
        except OSError:
            return
        p = p.parent


def _drop_sweep_lock_override() -> None:
    sys.argv = [a for a in sys.argv if a != SWEEP_LOCK_OVERRIDE]


def with_sweep_lock(argv: list[str]) -> list[str]:
    """``argv`` with :data:`SWEEP_LOCK_OVERRIDE` among its overrides (Hydra's parser needs them contiguous); an
    argv Hydra cannot parse, or that names the callback itself, is returned unchanged."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            overrides = get_args_parser().parse_args(argv[1:]).overrides
    except SystemExit:
        return list(argv)
    if any(o.lstrip("+~").split("=", 1)[0] == SWEEP_LOCK_KEY for o in overrides):
        return list(argv)
    if not overrides:
        return [*argv[:1], SWEEP_LOCK_OVERRIDE, *argv[1:]]
    last = max(i for i, a in enumerate(argv) if i > 0 and a == overrides[-1])
    return [*argv[:last + 1], SWEEP_LOCK_OVERRIDE, *argv[last + 1:]]


def run_cli(main: Callable[[], Any], schema: type) -> None:
    """Run the Hydra entry point ``main``; composition errors are one ``error:`` line, exit 2. The callback
    :class:`SweepLockCallback` checks a run (:data:`RUN_CHECKS`, its directory) before Hydra makes its directory,
    locks a multirun's sweep directory and checks every job first, and reports the jobs at its end; a multirun
    with failed jobs exits 2 (1 when one failed on something other than a bad input)."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")      # let Hydra's errors reach us instead of its report
    logging.raiseExceptions = False                     # a log file on a full disk must not print tracebacks
    argv = list(sys.argv)
    sys.argv = with_sweep_lock(argv)
    _State.schema, _State.exit_code = schema, 0
    try:
        main()
    except _hydra_errors() as e:
        print(f"error: {hydra_error_line(e, schema)}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        sys.argv = argv
    if _State.exit_code:                                # a multirun some of whose jobs failed
        raise SystemExit(_State.exit_code)


def _in_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def _hydra_dir() -> Path | None:
    return hydra_run_dir()


def remove_if_untouched(run_dir: Path | None, stop_at: Path | None = None) -> None:
    """Remove ``run_dir`` when a refused run left nothing in it but Hydra's job log and a lock no run
    holds, and then its parents that became empty, up to ``stop_at`` (the output directory): a
    refused command leaves no empty run directory behind."""
    if run_dir is None or not run_dir.is_dir():
        return
    entries = list(run_dir.iterdir())
    if not all((p.is_file() and p.suffix == ".log") or p.name == LOCK for p in entries):
        return
    lock = run_dir / LOCK
    if lock.exists():
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # held by another run: keep its directory
        except OSError:
            return
        finally:
            os.close(fd)
    logging.shutdown()
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.parent
    stop = stop_at.resolve() if stop_at is not None else None
    while stop is not None and parent.resolve() != stop and stop in parent.resolve().parents:
        try:
            parent.rmdir()                                   # only if empty
        except OSError:
            break
        parent = parent.parent


def _output_dir(args: tuple) -> Path | None:
    """``paths.output_dir`` of the entry point's config, when it resolves."""
    try:
        return Path(str(args[0].paths.output_dir))
    except Exception:  # no config, or it cannot resolve
        return None


def exit_on_user_error(fn: Callable) -> Callable:
    """Decorate an entry point: a :class:`UserError` prints one line and exits with code 2.

    In a Hydra multirun the error is logged and re-raised instead, so that Hydra marks only
    that job as failed and the other jobs still run.
    """
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Interrupted as e:                              # the state is saved: say how to resume
            print(f"interrupted: {e}", file=sys.stderr)
            raise SystemExit(e.exit_code) from None
        except (UserError, OmegaConfBaseException) as e:      # bad input, or a config value that cannot resolve
            line = str(e) if isinstance(e, UserError) else " ".join(str(e).split("\n")[0].split())
            if _in_multirun():
                log.error("error: %s", line)
                raise
            print(f"error: {line}", file=sys.stderr)
            run_dir = _hydra_dir()
            base = _State.bases.get(Path(os.path.abspath(run_dir))) if run_dir is not None else None
            remove_if_untouched(run_dir, base or _output_dir(args))
            raise SystemExit(2) from None

    return wrapper


__all__ = ["run_cli", "exit_on_user_error", "hydra_error_line", "remove_if_untouched", "SweepLockCallback",
           "with_sweep_lock"]
