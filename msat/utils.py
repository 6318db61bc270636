"""Small shared helpers: errors for users, seeding, devices, atomic writes, RNG state, versions."""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import logging
import os
import platform
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class UserError(Exception):
    """A problem with the user's input (config, names, files): reported in one line, exit code 2."""


class UnknownNameError(UserError, ValueError):
    """An unknown model, dataset or option name; the message lists the valid ones."""


class ConversionError(UserError, ValueError):
    """The model (or the calibration data) cannot be converted; the message names the node."""


class SimulationError(UserError, ValueError):
    """Bad simulation arguments, or an op that mixes time steps of the folded batch."""


VERSION = "0.1.0"         # the package version (msat.__version__)


class Interrupted(Exception):
    """The run stopped on SIGINT / SIGTERM after saving its resume state; the message says how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class StopSignals:
    """``with StopSignals() as stop: ... if stop.requested: ...``: SIGINT (Ctrl-C) and SIGTERM (e.g. SLURM
    preemption) set ``stop.requested`` (the signal number) so a loop can save its state at the next safe
    point; a second signal stops at once. Outside the main thread it does nothing."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.requested: int | None = None
        self._saved: dict = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:                 # a second signal: the default behaviour
            signal.signal(signum, self._saved.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.requested = signum
        log.warning("%s received: stopping after the current step to save the resume state (again: stop now)",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                num = getattr(signal, name)
                self._saved[num] = signal.signal(num, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for num, handler in self._saved.items():
            signal.signal(num, handler)
        self._saved = {}


def resume_command(*extra: str) -> str:
    """The command line of this process with ``extra`` overrides replacing those of the same keys."""
    keys = {e.split("=", 1)[0] for e in extra}
    args = [a for a in sys.argv[1:] if a.split("=", 1)[0].lstrip("+~") not in keys]
    return " ".join(["python", os.path.basename(sys.argv[0]) if sys.argv else "", *args, *extra]).strip()


def to_plain(obj: Any) -> Any:
    """DictConfig/ListConfig -> plain, resolved containers; any other object is returned unchanged.

    A dataclass instance (a validated config) becomes a dict. OmegaConf is imported only when given
    one of its nodes (the library core runs without it)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if type(obj).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(obj, resolve=True)
    return obj


# ----------------------------------------------------------------------------- seeding, devices

def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device).

    ``deterministic=True`` also asks cuDNN/torch for deterministic kernels (slower on GPU).
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


DEVICE_CHOICES = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``'auto'`` -> ``cuda`` if available, else ``cpu``; other names are checked, not guessed: a device this
    machine does not have (``cuda`` without CUDA, ``cuda:3`` with two GPUs, ``mps`` off Apple silicon) or a kind
    the suite does not run on is a :class:`UserError`, before anything is computed."""
    name = str(name).strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"invalid device {name!r}; use {DEVICE_CHOICES}") from e
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} requested but CUDA is not available on this machine; use device=auto "
                            "or device=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise UserError(f"device {name!r} requested but this machine has {n} CUDA device{'s' * (n != 1)} "
                            f"(cuda:0..cuda:{n - 1})")
        return dev
    if dev.type == "mps":
        if not (torch.backends.mps.is_built() and torch.backends.mps.is_available()):
            raise UserError(f"device {name!r} requested but MPS (Apple silicon's GPU) is not available on this "
                            "machine; use device=auto or device=cpu")
        if dev.index not in (None, 0):
            raise UserError(f"device {name!r} requested but MPS has one device (mps)")
        return dev
    raise UserError(f"device {name!r} ({dev.type}) is not supported; use {DEVICE_CHOICES}")


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes that can still be allocated on ``device``: free CUDA memory, or MemAvailable of /proc/meminfo for
    the host (None where it cannot be read)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- atomic writes

def file_kind(path: str | os.PathLike) -> str:
    """What ``path`` is, for a message: "a regular file", "a directory", "a character device", "a named pipe
    (FIFO)", "a block device", "a socket", "missing" (nothing there, or a link to nothing)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "missing"
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{max(n, 1) / 2**10:.0f} kB"


class DiskFullError(UserError, OSError):
    """No space left writing a file: names the file, the space it needs and what is free."""

    def __init__(self, path: str | os.PathLike, need: int, note: str | None = None):
        path = Path(path)
        where = path
        while not where.exists() and where != where.parent:
            where = where.parent
        free = shutil.disk_usage(where).free
        self.path, self.need = path, need
        note = note or f"{path.name} is unchanged (written atomically)"
        super().__init__(f"no space left on the device writing {path} (it needs about {_size(need)}, "
                         f"{_size(free)} free); free some space and rerun: {note}")

    def __str__(self) -> str:
        return self.args[0]


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace``.

    A reader sees either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFullError(path, len(data)) from None
        raise
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)                   # mkstemp's 0600 -> what open() would give
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise DiskFullError(path, len(data)) from None
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic UTF-8 text write (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (serialized in memory, then written like bytes)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic, indented JSON; values JSON cannot encode (paths, tensors, numpy) are stringified."""
    def default(o: Any) -> Any:
        if isinstance(o, (np.generic,)):
            return o.item()
        if isinstance(o, torch.Tensor) and o.numel() == 1:
            return o.item()
        return str(o)

    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=default) + "\n")


# ----------------------------------------------------------------------------- RNG state

def _numpy_state_to_plain(st: tuple) -> dict:
    # plain types and a tensor, so checkpoints load with torch.load(weights_only=True)
    key, keys, pos, has_gauss, cached = st
    return {"key": key, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_state_from_plain(d: dict) -> tuple:
    return (d["key"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached_gaussian"])


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict:
    """Python, NumPy, torch CPU and CUDA RNG states, plus named ``generators`` (e.g. a DataLoader's)."""
    return {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }


def restore_rng_state(state: dict, generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Inverse of :func:`capture_rng_state`; CUDA states are restored when the device count matches."""
    random.setstate(state["python"])
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    elif cuda:
        log.warning("checkpoint has %d CUDA RNG states, this machine %d devices: CUDA RNG not restored",
                    len(cuda), torch.cuda.device_count() if torch.cuda.is_available() else 0)
    saved = state.get("generators", {})
    for k, g in (generators or {}).items():
        if k not in saved:
            raise KeyError(f"no saved state for generator {k!r}; saved: {sorted(saved)}")
        g.set_state(saved[k].cpu())


# ----------------------------------------------------------------------------- provenance

def git_commit(repo: str | os.PathLike | None = None) -> str | None:
    """Current git commit of ``repo`` (default: this package's checkout), ``+dirty`` if modified."""
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def versions() -> dict:
    """Versions of Python, torch, torchvision, msat and the git commit, for provenance."""
    try:
        import torchvision
        tv = str(torchvision.__version__)
    except ImportError:
        tv = None
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": tv,
        "cuda": torch.version.cuda,
        "msat": VERSION,
        "git_commit": git_commit(),
    }


# ----------------------------------------------------------------------------- entry points

def hydra_run_dir() -> Path | None:
    """The current Hydra job's output directory, or ``None`` outside ``@hydra.main``."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        return None


# ----------------------------------------------------------------------------- distributed

@dataclass
class DistEnv:
    """Process-group facts; ``world_size == 1`` means a plain single-process run."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def all_reduce_sum(tensors: Any) -> None:
    """Sum tensors in place across the ranks of torch.distributed when it is initialized (else no-op)."""
    if dist.is_available() and dist.is_initialized():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def setup_distributed(device_name: str) -> tuple[DistEnv, torch.device]:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK; join the group (NCCL on CUDA, else Gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(), resolve_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device_name)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank=rank, local_rank=local, world_size=world, owns_group=owns), dev
