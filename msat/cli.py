"""What the entry points share: one ``error:`` line and exit code 2 for every bad input.

``run_cli(main, schema)`` runs a ``@hydra.main`` function. Hydra's own composition errors (an
unknown group option, a typo'd key, a value of the wrong type: 12-19 lines and exit 1 otherwise)
become one line naming the bad key with the valid keys or options, exit 2. ``exit_on_user_error``
does the same for a :class:`msat.utils.UserError` raised by the run, and removes the run directory
Hydra created for a run that was refused before it wrote anything.

A multirun's sweep directory is locked like a run directory: ``run_cli`` adds the Hydra callback
:class:`SweepLockCallback` (``hydra.callbacks.msat_sweep_lock``), through which the launching process holds
:class:`msat.runs.SweepLock` on ``hydra.sweep.dir`` from before the sweeper starts until every job has
returned; a second multirun into that directory is refused in one ``error:`` line naming the first, exit 2.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import io
import logging
import os
import re
import shutil
import sys
import typing
from pathlib import Path
from typing import Any, Callable

from hydra._internal.utils import get_args_parser
from hydra.experimental.callback import Callback

from .config import field_names
from .runs import SweepLock
from .utils import Interrupted, UserError

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
    from hydra.errors import MissingConfigException

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
    from . import config
    from .methods import get_method, list_methods

    classes = [getattr(config, n) for n in config.__all__] + [get_method(m).params for m in list_methods()]
    return next((c for c in classes if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__name__ == name),
                None)


def _hydra_errors() -> tuple[type, ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return HydraException, OmegaConfBaseException


SWEEP_LOCK_KEY = "hydra.callbacks.msat_sweep_lock._target_"
SWEEP_LOCK_OVERRIDE = f"++{SWEEP_LOCK_KEY}=msat.cli.SweepLockCallback"


class SweepLockCallback(Callback):
    """Hydra callback: in a multirun, the launching process holds :class:`msat.runs.SweepLock` on
    ``hydra.sweep.dir`` from before the sweeper starts (or writes ``multirun.yaml``) until every job has
    returned, whatever the launcher (basic, joblib, submitit); when another multirun holds it, one ``error:``
    line and exit 2, before anything is written. Jobs and single runs are untouched."""

    def __init__(self) -> None:
        self.lock: SweepLock | None = None
        _drop_sweep_lock_override()                  # sys.argv as typed (resume lines, lock notes name it)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
        except Exception as e:  # a sweep dir that cannot resolve yet: the sweeper reports it
            log.warning("sweep directory not locked (%s)", " ".join(str(e).split())[:200])
            return
        try:
            self.lock = SweepLock(sweep_dir).__enter__()
        except UserError as e:                       # Hydra turns a callback's exceptions into warnings: exit here
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if self.lock is not None:
            self.lock.__exit__()
            self.lock = None

    def __getstate__(self) -> dict:
        return {"lock": None}                        # a copy sent to a job process holds nothing


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
    """Run the Hydra entry point ``main``; composition errors are one ``error:`` line, exit 2. A multirun locks
    its sweep directory (:class:`SweepLockCallback`)."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")      # let Hydra's errors reach us instead of its report
    logging.raiseExceptions = False                     # a log file on a full disk must not print tracebacks
    argv = list(sys.argv)
    sys.argv = with_sweep_lock(argv)
    try:
        main()
    except _hydra_errors() as e:
        print(f"error: {hydra_error_line(e, schema)}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        sys.argv = argv


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except (ImportError, ValueError):
        return False


def _hydra_dir() -> Path | None:
    from .utils import hydra_run_dir

    return hydra_run_dir()


def remove_if_untouched(run_dir: Path | None, stop_at: Path | None = None) -> None:
    """Remove ``run_dir`` when a refused run left nothing in it but Hydra's job log and a lock no run
    holds, and then its parents that became empty, up to ``stop_at`` (the output directory): a
    refused command leaves no empty run directory behind."""
    if run_dir is None or not run_dir.is_dir():
        return
    entries = list(run_dir.iterdir())
    if not all((p.is_file() and p.suffix == ".log") or p.name == ".lock" for p in entries):
        return
    lock = run_dir / ".lock"
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
        from omegaconf.errors import OmegaConfBaseException

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
            remove_if_untouched(_hydra_dir(), _output_dir(args))
            raise SystemExit(2) from None

    return wrapper


__all__ = ["run_cli", "exit_on_user_error", "hydra_error_line", "remove_if_untouched", "SweepLockCallback",
           "with_sweep_lock"]
