"""Run directories: unique names, one run at a time, outputs committed as one set, verified on read.

- ``run_id()``: the name of a fresh run directory, ``<date>_<time>_<6 hex>`` (two runs started in the
  same second get different directories); ``${msat_run_id:}`` in the Hydra configs.
- ``RunLock(run_dir)``: an exclusive lock held for the whole run; a second run into a locked
  directory is refused in one line naming the other run (pid, host, start, command).
- ``Staging(run_dir)`` and ``commit``: a run writes its outputs into ``<run_dir>/.staging-*`` and
  commits them together: the old result's marker (``metrics.json``) is removed first, the staged
  files are moved in, files of the old set that the new one lacks are removed, and the new
  ``metrics.json`` is written last, with the sha256 of every file of the set (``files``) and its own
  ``signature`` (the sha256 of its canonical JSON without that field). A directory therefore holds one
  result, or none while a commit is under way, never files of two.
- ``load_run(run_dir)``: the result, after checking that ``metrics.json`` is the one committed (a JSON object
  with a ``files`` manifest, its signature matching its content) and that every file of its set is too.
- ``SweepLock(sweep_dir)``: the same lock on a Hydra multirun's sweep directory (held by the launching
  process for the whole sweep): a second multirun into it is refused in one line naming the first.
- ``CheckpointLock(path)``: training's lock on the checkpoint it writes (``<path>.lock``); ``commit_in_place``:
  training's set (config, per-epoch logs written as it goes) committed by ``summary.json``, written last with
  the sha256 of every file of the set and its signature.
- ``run_in_dir(run_dir, device)``: the one run wrapper of training and evaluation (a context manager yielding a
  :class:`Run`): the process group, the stop signals, the locks, the run's set committed (``Run.commit``: staged,
  or in place), and the logger and the process group closed on every path.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from .checkpoint import last_ckpt_path
from .loggers import RunLogger
from .utils import (DiskFullError, DistEnv, StopSignals, UserError, atomic_write_text, file_kind, file_sha256,
                    setup_distributed)

MARKER = "metrics.json"
LOCK = ".lock"
SIGNATURE = "signature"                  # the key of a marker's own digest ("sha256:<hex>")


def run_id() -> str:
    """``YYYY-mm-dd_HH-MM-SS_<6 hex>``; under torchrun every rank gets the same one (from the
    rendezvous id and the launcher's start, which all ranks share)."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    shared = os.environ.get("TORCHELASTIC_RUN_ID")
    if shared and os.environ.get("WORLD_SIZE", "1") != "1":
        key = f"{shared}:{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}:{os.getppid()}"
        return time.strftime("%Y-%m-%d") + "_torchrun_" + hashlib.sha256(key.encode()).hexdigest()[:6]
    return f"{stamp}_{secrets.token_hex(3)}"


def _holder(fd: int) -> str:
    """The run that holds the lock file ``fd`` (as its holder wrote it): pid, host, start, command."""
    try:
        other = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        other = {}
    return (f"pid {other.get('pid', '?')} on {other.get('host', '?')}, started {other.get('started', '?')}: "
            f"{other.get('command', '?')}")


def _sign(lock: Any, path: Path) -> None:
    """Write this run (pid, host, start, command) into the held lock file ``lock.fd`` at ``path``; on failure
    release the lock, and a full disk is one :class:`DiskFullError`."""
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}).encode()
    try:
        os.ftruncate(lock.fd, 0)
        os.pwrite(lock.fd, text, 0)
    except OSError as e:
        lock.__exit__()
        if e.errno == errno.ENOSPC:
            raise DiskFullError(path, len(text), "nothing was written") from None
        raise


class RunLock:
    """Exclusive lock on ``run_dir`` (``fcntl.flock`` on ``run_dir/.lock``), released on exit."""

    what = "run directory"                       # how the refusal names the directory and the other holder
    holder = "another run"
    key = "hydra.run.dir"

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.fd: Optional[int] = None

    def __enter__(self) -> "RunLock":
        path = self.run_dir / LOCK
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DiskFullError(path, 4096, "nothing was written") from None
            if isinstance(e, (FileExistsError, NotADirectoryError, PermissionError)):
                why = (e.strerror or str(e)).lower()
                raise UserError(f"cannot use {self.what} {self.run_dir}: {why} ({e.filename}); choose another "
                                f"{self.key}") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            who = _holder(fd)
            os.close(fd)
            raise UserError(f"{self.what} {self.run_dir} is in use by {self.holder} ({who}); wait for it to "
                            f"finish or choose another {self.key}") from None
        self.fd = fd
        _sign(self, path)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class SweepLock(RunLock):
    """Exclusive lock on a Hydra multirun's sweep directory (``sweep_dir/.lock``), held by the process that
    launches the jobs for the whole sweep: two multiruns never write their jobs into one sweep directory."""

    what = "sweep directory"
    holder = "another multirun"
    key = "hydra.sweep.dir"


def _canonical_digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no spaces): what a marker's signature covers."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def signed_json(result: Mapping[str, Any]) -> tuple[str, str]:
    """(the marker's text, its signature): ``result`` as JSON (values JSON cannot encode as strings) plus
    ``signature``, the digest of that JSON's canonical form without the signature. Any edit of the content
    (not of the layout) makes the signature differ."""
    body = json.loads(json.dumps(dict(result), default=str))          # exactly what a reader gets back
    body.pop(SIGNATURE, None)
    sig = _canonical_digest(body)
    return json.dumps({**body, SIGNATURE: sig}, indent=2) + "\n", sig




class Staging:
    """A staging directory inside ``run_dir`` for one result set; removed on exit unless committed.

    ``path(name)`` is where a file of the set is written. Disk-full errors inside the block become one
    :class:`UserError` naming the file and the space needed; nothing of the previous result is touched.
    """

    def __init__(self, run_dir: str | os.PathLike, expected_bytes: int = 0):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / f".staging-{os.getpid()}-{secrets.token_hex(3)}"
        self.expected = expected_bytes
        self.committed = False

    def __enter__(self) -> "Staging":
        self.dir.mkdir(parents=True, exist_ok=False)
        return self

    def path(self, name: str) -> Path:
        return self.dir / name

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        staged = _tree_size(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
            name = exc.path.name if isinstance(exc, DiskFullError) else ""
            raise DiskFullError(self.run_dir / name if name else self.run_dir,
                                max(self.expected, _result_size(self.run_dir), staged),
                                "the previous result there is unchanged") from None
        return False

    def commit(self, result: Mapping[str, Any]) -> dict:
        """Move the staged files into ``run_dir`` as one set; write ``metrics.json`` (``result`` plus the
        set's ``files`` manifest) last. Returns the result as written."""
        staged = sorted(p for p in self.dir.rglob("*") if p.is_file())
        files = {str(p.relative_to(self.dir)): file_sha256(p) for p in staged}
        if MARKER in files:
            raise ValueError(f"{MARKER} is written by commit, not staged")
        out = {**result, "files": files}
        text, out[SIGNATURE] = signed_json(out)
        old = self.run_dir / MARKER
        previous = _manifest(self.run_dir)
        try:
            probe = self.dir / MARKER
            atomic_write_text(probe, text)               # the marker fits on the disk before anything moves
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DiskFullError(self.run_dir / MARKER, len(text), "the previous result there is unchanged") \
                    from None
            raise
        old.unlink(missing_ok=True)                      # from here the directory holds no result
        for p in staged:
            dest = self.run_dir / p.relative_to(self.dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, dest)
        for name in previous:
            if name not in files and (self.run_dir / name).is_file():
                (self.run_dir / name).unlink(missing_ok=True)
        os.replace(probe, old)                           # the new result, complete
        self.committed = True
        return out


def _safe_name(name: Any) -> bool:
    """A manifest entry names a file inside the run directory (relative, no ``..``)."""
    return isinstance(name, str) and bool(name) and not os.path.isabs(name) and ".." not in Path(name).parts


def _manifest(run_dir: Path) -> dict:
    """The ``files`` of the result committed in ``run_dir`` whose names stay inside it ({} if none or unreadable):
    what a new commit replaces."""
    try:
        files = json.loads((run_dir / MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return {}
    return {n: h for n, h in files.items() if _safe_name(n)} if isinstance(files, dict) else {}


def _result_size(run_dir: Path) -> int:
    """Bytes of the result committed in ``run_dir`` (0 if none): what a new result of the run needs again."""
    marker = run_dir / MARKER
    if not marker.is_file():
        return 0
    return marker.stat().st_size + sum((run_dir / n).stat().st_size for n in _manifest(run_dir)
                                       if (run_dir / n).is_file())


def _tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def load_run(run_dir: str | os.PathLike, verify: bool = True) -> dict:
    """``metrics.json`` of ``run_dir`` (a :class:`UserError` naming the file, in one line, otherwise).

    It must be a JSON object with a ``files`` manifest (name -> sha256). With ``verify`` (the default: what
    tables and ``skip_done`` use) its ``signature`` must match its content, and every file of its set must be
    the one committed: a result edited, truncated or mixed with other files after its run committed it is
    refused, never published."""
    run_dir = Path(run_dir)
    path = run_dir / MARKER
    if not path.is_file():
        if path.exists():
            raise UserError(f"{path} is {file_kind(path)}, not a result file; rerun the run into a fresh "
                            "directory")
        raise UserError(f"{run_dir} holds no result ({MARKER} missing: the run did not finish, or is committing)")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:                         # not JSON, not UTF-8, unreadable
        detail = " ".join(str(e).split())[:200]
        raise UserError(f"{path} is not a readable result ({type(e).__name__}: {detail}); rerun the run") from None
    if not isinstance(result, dict):
        raise UserError(f"{path} is not a result of a run (a JSON {type(result).__name__}, not an object); "
                        "rerun the run")
    files = result.get("files")
    if not isinstance(files, dict) or not all(_safe_name(n) and isinstance(h, str) for n, h in files.items()):
        what = "has no files entry" if "files" not in result else \
            f"has a files entry that is not a mapping of file names inside {run_dir} to sha256 digests"
        raise UserError(f"{path} {what} (edited after the run committed it?); rerun the run")
    if not verify:
        return result
    body = {k: v for k, v in result.items() if k != SIGNATURE}
    if SIGNATURE not in result:
        raise UserError(f"{path} carries no signature of its content (edited, or written before results were "
                        "signed); rerun the run")
    if result[SIGNATURE] != _canonical_digest(body):
        raise UserError(f"{path} was edited after the run committed it (its signature does not match its "
                        "content); rerun the run")
    for name, digest in files.items():
        f = run_dir / name
        if not f.is_file():
            state = "is missing" if not f.exists() else f"is {file_kind(f)}"
            raise UserError(f"{f} {state}, but {path} lists it in its set (removed after the run committed "
                            "it?); rerun the run")
        if file_sha256(f) != digest:
            raise UserError(f"{f} was changed after the run committed it (its sha256 differs from the one in "
                            f"{path}); rerun the run")
    return result


__all__ = ["run_id", "LOCK", "RunLock", "SweepLock", "Staging", "load_run", "signed_json", "MARKER"]


# ----------------------------------------------------------------------------- training: a checkpoint lock, a set
# committed in place (its per-epoch logs are written as it goes: they are its resume state)

def ckpt_lock_path(path: str | os.PathLike) -> Path:
    """The lock a training holds on the checkpoint it writes: ``x.pt`` -> ``x.pt.lock``."""
    p = Path(path)
    return p.with_name(p.name + LOCK)


class CheckpointLock:
    """Exclusive lock on a checkpoint a training writes (``fcntl.flock`` on ``<path>.lock``), held for the whole
    run: a second training writing the same file is refused in one line naming the checkpoint and the other run.

    The lock file is removed on exit (a run that opened it just before locks the new file instead), and so is
    the checkpoint folder when this lock created it and it is still empty (a refused run leaves nothing).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock = ckpt_lock_path(self.path)
        self.fd: Optional[int] = None
        self._made_dir = False

    def __enter__(self) -> "CheckpointLock":
        for p in (self.path, last_ckpt_path(self.path)):        # the best checkpoint and the resume state
            if p.exists() and not p.is_file():
                raise UserError(f"checkpoint path {p} is {file_kind(p)}, not a file training can write; set "
                                "train.ckpt_path to a file path (or paths.ckpt_dir to a folder)")
        self._made_dir = not self.lock.parent.exists()
        while True:
            try:
                self.lock.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
            except (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as e:
                if isinstance(e, FileNotFoundError) and not self.lock.parent.is_dir():
                    continue                             # the folder was removed meanwhile: make it again
                why = (e.strerror or str(e)).lower()
                raise UserError(f"cannot write checkpoint {self.path}: {why} ({e.filename}); set train.ckpt_path "
                                "(or paths.ckpt_dir) to a place you can write") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                who = _holder(fd)
                os.close(fd)
                raise UserError(f"checkpoint {self.path} is in use by another training ({who}); wait for it to "
                                "finish or set another train.ckpt_path (or paths.ckpt_dir)") from None
            try:
                current = os.stat(self.lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)                                 # its holder removed this file on exit: lock the new one
        self.fd = fd
        _sign(self, self.lock)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is None:
            return
        self.lock.unlink(missing_ok=True)                # while held: whoever opened it retries on a new file
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        if self._made_dir:
            try:
                self.lock.parent.rmdir()                 # only if empty: a run refused before it saved anything
            except OSError:
                pass


CKPT_WAIT_S = 5.0        # how long an evaluation waits for a training that holds the checkpoint's lock


def checkpoint_writer(path: str | os.PathLike) -> Optional[str]:
    """The training run that holds the lock of checkpoint ``path`` (``<path>.lock``, :class:`CheckpointLock`), as
    its holder signed it; None when no training writes it."""
    try:
        fd = os.open(ckpt_lock_path(path), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            return _holder(fd) if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def wait_for_checkpoint(path: str | os.PathLike, timeout: float = CKPT_WAIT_S) -> None:
    """Readers respect training's checkpoint lock: wait up to ``timeout`` seconds for the training that writes
    ``path`` to end, then refuse in one line naming it (its weights change until it ends)."""
    deadline = time.monotonic() + timeout
    while (who := checkpoint_writer(path)) is not None:
        if time.monotonic() >= deadline:
            raise UserError(f"checkpoint {path} is being written by a training run ({who}); its weights change "
                            "until that run ends: evaluate it when the run has finished, or give another ckpt=")
        time.sleep(0.25)


def commit_in_place(run_dir: str | os.PathLike, names: list[str], result: Mapping[str, Any],
                    marker: str = "summary.json") -> dict:
    """Commit files a run wrote into ``run_dir`` as it went (training's config and per-epoch logs) as one set:
    ``marker`` is written last (atomically), ``result`` plus the sha256 of each of ``names`` (``files``).

    The run removes the old marker before it writes any file of its own, so until this commit the directory
    holds no result, never a marker of one run beside files of another. Returns the marker as written."""
    run_dir = Path(run_dir)
    files = {n: file_sha256(run_dir / n) for n in names if (run_dir / n).is_file()}
    out = {**result, "files": files}
    text, out[SIGNATURE] = signed_json(out)
    atomic_write_text(run_dir / marker, text)
    return out


__all__ += ["ckpt_lock_path", "CheckpointLock", "checkpoint_writer", "wait_for_checkpoint", "commit_in_place"]


# ----------------------------------------------------------------------------- the run wrapper

def write_config(path: Path, config: Mapping) -> None:
    """The resolved config of the run as YAML (atomic)."""
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(dict(config))))


def commit_set(run_dir: str | os.PathLike, result: Mapping[str, Any], write: Callable[[Staging], None],
               expected_bytes: int = 0) -> dict:
    """One result set committed through a :class:`Staging` directory: ``write(staging)`` writes the set's files
    (``staging.path(name)``), then ``metrics.json`` is written last. Returns the marker as written."""
    with Staging(run_dir, expected_bytes=expected_bytes) as st:
        write(st)
        return st.commit(result)


class Run:
    """One run in its directory, as :func:`run_in_dir` holds it: ``run_dir``, the process group (``env``),
    the ``device``, the stop ``signals``; the ``logger`` it opens (:meth:`open_logger`) is closed by the
    wrapper; :meth:`commit` commits its set."""

    def __init__(self, run_dir: Path, env: DistEnv, device: torch.device, signals: StopSignals):
        self.run_dir, self.env, self.device, self.signals = run_dir, env, device, signals
        self.logger: Optional[RunLogger] = None

    def open_logger(self, cfg_logger: Any, config: Mapping, **kw: Any) -> RunLogger:
        """The run's :class:`RunLogger` (rank 0 only: disabled elsewhere), finished when the run ends: exit code 0
        after the block, 1 after an exception."""
        self.logger = RunLogger(cfg_logger, self.run_dir, config, enabled=self.env.is_main, **kw)
        return self.logger

    def commit(self, result: Mapping[str, Any], write: Optional[Callable[[Staging], None]] = None,
               names: Optional[list[str]] = None, marker: str = MARKER, expected_bytes: int = 0) -> dict:
        """Commit the run's set (rank 0; other ranks get ``result`` back): staged (``write`` writes the files,
        ``metrics.json`` last: :func:`commit_set`) or in place (the files ``names`` the run wrote, ``marker``
        last: :func:`commit_in_place`). Returns the marker as written."""
        if not self.env.is_main:
            return dict(result)
        if write is not None:
            return commit_set(self.run_dir, result, write, expected_bytes)
        return commit_in_place(self.run_dir, list(names or []), result, marker=marker)

    def finish(self, failed: bool) -> None:
        """Close the logger (idempotent): exit code 1 after a failure."""
        if self.logger is not None:
            self.logger.finish(exit_code=1 if failed else 0)


def _lock_run_dir(held: ExitStack, run_dir: Path) -> None:
    """Hold ``RunLock(run_dir)`` in ``held``; no space for its note of who holds it is a :class:`DiskFullError`."""
    try:
        held.enter_context(RunLock(run_dir))
    except OSError as e:
        if e.errno != errno.ENOSPC or isinstance(e, DiskFullError):
            raise
        raise DiskFullError(run_dir / LOCK, 1024, "nothing was written") from None


@contextmanager
def run_in_dir(run_dir: str | os.PathLike, device: str = "auto", locks: tuple = (),
               announce: Optional[str] = None) -> Iterator[Run]:
    """The one wrapper of a run (training, evaluation) in ``run_dir``, on ``device`` (joins torchrun's process
    group), yielding its :class:`Run`.

    In order: the process group; the line ``announce`` (printed by rank 0); the stop signals (SIGINT /
    SIGTERM set ``run.signals.requested`` from the moment the run holds its directory, so an interrupt ends it
    with its resume line); on rank 0, which writes, :class:`RunLock` on ``run_dir`` and each of ``locks`` (e.g.
    training's :class:`CheckpointLock`). On every way out (success, a :class:`UserError`, an interrupt, any
    exception) the logger the run opened is finished (exit code 0 or 1), the locks and signal handlers are
    released and a process group this process joined is destroyed.
    """
    run_dir = Path(run_dir)
    env, dev = setup_distributed(device)
    try:
        if announce and env.is_main:
            print(announce, flush=True)
        with ExitStack() as held:
            signals = held.enter_context(StopSignals())
            if env.is_main:                              # rank 0 writes, so it holds the locks
                _lock_run_dir(held, run_dir)
                for lock in locks:
                    held.enter_context(lock)
            run = Run(run_dir, env, dev, signals)
            try:
                yield run
            except BaseException:
                run.finish(failed=True)
                raise
            run.finish(failed=False)
    finally:
        if env.owns_group:
            dist.destroy_process_group()


__all__ += ["write_config", "commit_set", "Run", "run_in_dir"]
