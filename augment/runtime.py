"""Run machinery shared by both training loops: device and precision, seeding and RNG state,
atomic checkpoints, the loss meter that stops a diverged run, distributed set-up from ``torchrun``,
run folders and TensorBoard."""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import pickle
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .about import source_checkout, toolkit_version
from .config import config_from_dict, config_source, edited_keys, load_config, save_config
from .errors import UserError, cli_command


# ---------------------------------------------------------------- device, precision, seeds
def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` takes the GPU when one is visible; ``cuda`` takes GPU ``local_rank`` (under torchrun, this process's),
    ``cuda:N`` GPU N, ``mps`` Apple's GPU. One that is not there is a user error."""
    kind, _, index = name.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise UserError(f"--device {name}: choose auto, cpu, cuda, cuda:N (a GPU's index) or mps")
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("--device mps: no Apple GPU (MPS) is available; use --device cpu or --device auto")
        return torch.device("mps")
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible; use --device cpu or --device auto")
    gpu = int(index) if index else local_rank
    if gpu >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")
    return torch.device("cuda", gpu)


def autocast(device: torch.device, enabled: bool = True, cpu: bool = False):
    """bf16 autocast when ``enabled``: on CUDA, and on the CPU only with ``cpu`` and a CPU that computes
    bf16 natively (AVX512-BF16 or AMX; emulated bf16 is slower than float32); otherwise a no-op."""
    on = device.type == "cuda" or (cpu and device.type == "cpu" and cpu_bf16_native())
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and on)


def cpu_bf16_native() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rng_state() -> dict:
    """The global RNG states a training step draws from (Python, torch CPU, torch CUDA)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A crash or a full disk leaves either the old checkpoint or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch's own file writer reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{path}: could not write checkpoint ({reason}); free disk space or choose another --out") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """Load a checkpoint or state dict with ``weights_only=True``: tensors and plain data only. With
    ``mmap`` the file is memory-mapped and a tensor is read from disk only when used.

    A file holding arbitrary Python objects (a pickle that could run code) is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file; give a run folder or a .pt file that exists")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: refused to load: it holds Python objects other than tensors and plain data, "
                        "which could run code; only load checkpoints and state dicts you trust, saved as tensors") from e
    except Exception as e:  # damaged files raise EOFError, KeyError, IndexError, RuntimeError, ...
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"{path}: not a readable checkpoint ({reason}); "
                        "the file is damaged or of another format") from e


def refuse_other_layout(path: Path, found: int, current: int, command: str) -> None:
    """Refuse to resume from a checkpoint of layout ``found`` (what it holds and how its run draws its
    augmentation) when ``command`` now writes layout ``current``: resuming could not be exact."""
    if found != current:
        raise UserError(f"{path}: written by an earlier {command} (checkpoint layout {found}, now {current}); "
                        "it can still be evaluated and used, but not resumed exactly: start a new run")


def json_safe(value):
    """``value`` with NaN (a rate with no cases, e.g. the sensitivity of an absent class) and infinities
    (thresholds) as null, so the JSON written of it is strict."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see the old file or
    the new one, never half of one. A failure is a one-line :class:`UserError` naming the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{path}: could not write ({e.strerror or e}); free disk space or choose another "
                        "output folder") from e
    finally:
        tmp.unlink(missing_ok=True)


TEMPORARY = re.compile(r"\.(?:tmp|part)(\d+)(?:\.\w+)?$")  # how writes here name their temporary files


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files (``*.tmp<pid>``, ``*.tmp<pid>.npy``, ``*.part<pid>.npy``, ...) that processes
    no longer running left in ``folder`` (killed while writing); those of running processes stay. Returns the
    files removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for path in entries:
        found = TEMPORARY.search(path.name)
        if found and not process_alive(int(found.group(1))) and path.is_file():
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass  # another process removed it, or it is not ours to remove
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except (OverflowError, ValueError):
        return False  # no such pid can exist
    return True


# ---------------------------------------------------------------- losses
class LossMeter:
    """Running sums of named losses on the device, and the first step whose losses were not finite.

    :meth:`add` never syncs with the host; :meth:`read` and :meth:`check_finite` do, so a loop calls
    them only at its logging steps. Under ``torchrun`` every rank must call :meth:`check_finite` at the
    same steps: the ranks agree on the first bad step, so all of them stop.
    """

    def __init__(self, names: tuple[str, ...], device: torch.device):
        self.names = names
        self.sums = torch.zeros(len(names), device=device)
        self.count = 0
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, losses: torch.Tensor, step: int) -> None:
        """``losses (K,)`` (one per name) of ``step``; no host sync."""
        self.sums += losses
        self.count += 1
        newly_bad = ~torch.isfinite(losses).all() & (self.first_bad < 0)
        self.first_bad = torch.where(newly_bad, torch.full_like(self.first_bad, step), self.first_bad)

    def read(self) -> dict[str, float]:
        """Mean of each loss since the last read (one host sync), then start over."""
        means = (self.sums / max(self.count, 1)).tolist()
        self.sums.zero_()
        self.count = 0
        return dict(zip(self.names, means))

    def check_finite(self, checkpoint: Path | None, saved_step: int | None) -> None:
        """Raise a :class:`UserError` naming the first step with a NaN or infinite loss, and the last good
        ``checkpoint`` (written at ``saved_step``; None when none was written), which the caller keeps."""
        bad = self.first_bad.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # all ranks stop together
            none = torch.iinfo(torch.long).max
            bad = torch.where(bad < 0, torch.full_like(bad, none), bad)
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MIN)
            bad = torch.where(bad == none, torch.full_like(bad, -1), bad)
        bad = int(bad)
        if bad < 0:
            return
        kept = (f"the last good checkpoint, {checkpoint} (step {saved_step}), is kept" if saved_step is not None
                else "no checkpoint had been written yet")
        raise UserError(f"a loss became NaN or infinite at step {bad}; training stopped and {kept}; "
                        "lower train.lr or check the images")


# ---------------------------------------------------------------- distributed
@dataclass(frozen=True)
class Dist:
    """Where this process stands in a ``torchrun`` job (rank 0 of 1 when run plainly)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str = "auto") -> Dist:
    """Join the process group ``torchrun`` describes in the environment (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as td
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    if not td.is_initialized():
        td.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(td.get_rank(), td.get_world_size(), local)


def all_ranks(obj: Any, dist: Dist) -> list:
    """``obj`` of every rank, in rank order, on every rank (``[obj]`` on one process). Picklable objects
    only; tensors in them should be on the CPU."""
    if dist.world_size == 1:
        return [obj]
    import torch.distributed as td
    gathered = [None] * dist.world_size
    td.all_gather_object(gathered, obj)
    return gathered


def close_distributed() -> None:
    import torch.distributed as td
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


# ---------------------------------------------------------------- interruption
class GracefulStop:
    """Inside ``with GracefulStop() as stop:``, SIGINT and SIGTERM set ``stop.requested`` so the
    loop can save a checkpoint and exit cleanly; a second signal stops at once."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def stop_agreed(stop: GracefulStop, dist: Dist, step: int, every: int, device: torch.device) -> bool:
    """Whether to stop after ``step``: at once on one process; under ``torchrun`` all ranks agree every
    ``every`` steps (one all-reduce), so every rank saves at the same step even when the signal reached
    them at different times."""
    if dist.world_size == 1:
        return stop.requested
    if step % every:
        return False
    import torch.distributed as td
    flag = torch.tensor([float(stop.requested)], device=device)
    td.all_reduce(flag, op=td.ReduceOp.MAX)
    return bool(flag.item())


def broadcast_buffers(module: torch.nn.Module, dist: Dist) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics): DDP copies them only at the
    start of a forward pass, so after the last step of an epoch each rank holds its own."""
    if dist.world_size > 1:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)


# ---------------------------------------------------------------- run folders
def new_run_dir(out: str | Path, kind: str) -> Path:
    """A fresh folder ``<out>/<kind>/<YYYYmmdd-HHMMSS>`` (suffixed if that exists)."""
    base = Path(out) / kind
    base.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    n = 0
    while True:  # mkdir claims the name, so two processes starting at once get two folders
        run = base / (f"{stamp}-{n}" if n else stamp)
        try:
            run.mkdir()
            return run
        except FileExistsError:
            n += 1


def latest_run(out: str | Path, kind: str, marker: str = "run.json", holding: tuple[str, ...] = ()) -> Path | None:
    """The newest run folder of ``kind`` under ``out`` that holds ``marker`` and, when ``holding`` names files,
    one of them (a checkpoint: a run that failed before writing one is not "the latest run"), or None."""
    base = Path(out) / kind
    runs = [p for p in base.glob("*") if (p / marker).exists()
            and (not holding or any((p / name).is_file() for name in holding))] if base.is_dir() else []
    return max(runs, key=_run_order, default=None)


def resolve_run_file(checkpoint: str | Path | None, out: str | Path, kind: str, names: tuple[str, ...],
                     marker: str = "run.json") -> Path:
    """The file a command reads from a run: ``checkpoint`` itself when it is a file; the first of ``names``
    in it when it is a run folder; with None, that file of the latest run of ``kind`` under ``out`` that
    holds ``marker`` and one of ``names``. Anything else is a one-line :class:`UserError` saying what to pass."""
    wanted = " or ".join(names)
    if checkpoint is None:
        checkpoint = latest_run(out, kind, marker, holding=names)
        if checkpoint is None:
            command = {"gan": "gan-train", "classifier": "classify-train"}.get(kind, "the training command")
            raise UserError(f"{Path(out) / kind}: no {kind} run with {wanted} yet; run `{cli_command()} {command}` "
                            "first or pass --checkpoint")
    path = Path(checkpoint)
    if path.is_dir():
        found = next((path / name for name in names if (path / name).is_file()), None)
        if found is None:
            raise UserError(f"{path}: no {wanted} here; give a {kind} run folder or a checkpoint file")
        return found
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint; give a {kind} run folder or a checkpoint file that exists")
    return path


def _run_order(run: Path) -> tuple[list[str], int]:
    """``<date>-<time>-10`` is newer than ``<date>-<time>-9``."""
    parts = run.name.split("-")
    return parts[:2], int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0


def resumed_config(cls: type, ckpt: dict, path: Path):
    """The config checkpoint ``path`` was saved with (its run's ``config.yaml`` when it stores none, as
    checkpoints of earlier versions may), warning in one line when that file was edited since."""
    if "config" not in ckpt:
        return load_config(cls, path.parent / "config.yaml")
    cfg = config_from_dict(cls, ckpt["config"], path)
    warn_edited_config(cfg, path.parent / "config.yaml")
    return cfg


def warn_edited_config(cfg: Any, file: Path) -> None:
    """One warning line naming what ``file`` (a run's ``config.yaml``) says otherwise than ``cfg``, the config
    a resumed run goes on with."""
    diff = edited_keys(cfg, file)
    if diff:
        print(f"warning: {file}: edited since the run started ({diff}); resuming with the config stored in "
              "the checkpoint, as the run began", file=sys.stderr)


def write_run_info(run_dir: str | Path, cfg: Any, seed: int, data_fingerprint: str = "", **extra) -> None:
    """``config.yaml`` (the resolved config) and ``run.json`` (what it takes to reproduce the run, with the
    config file the config was read from, ``null`` for the defaults in code, and the ``--set`` overrides)."""
    run_dir = Path(run_dir)
    save_config(cfg, run_dir / "config.yaml")
    source = config_source(cfg)
    info = {
        "command": sys.argv,
        "config_file": source["file"],
        "config_overrides": source["overrides"],
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "seed": seed,
        "data_fingerprint": data_fingerprint,
        "git_commit": git_commit(),
        "hostname": socket.gethostname(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": package_versions(),
        **extra,
    }
    write_text_atomic(run_dir / "run.json", json.dumps(info, indent=2, default=str) + "\n")


def recorded_data(run_dir: str | Path) -> Path | None:
    """The data a run was trained on, as its ``run.json`` records it; None when it is missing or unreadable."""
    try:
        data = json.loads((Path(run_dir) / "run.json").read_text()).get("data")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(data) if isinstance(data, str) and data else None


def package_versions() -> dict:
    versions = {"cxrgan": toolkit_version(), "python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "numpy", "skimage"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit of the source checkout the toolkit runs from; None as installed (a wheel in a
    virtual environment inside some other repository must not record that repository's commit)."""
    root = source_checkout()
    if root is None:
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------- TensorBoard
class _NullWriter:
    """Stands in for a SummaryWriter on ranks other than 0."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def tensorboard_writer(run_dir: str | Path, enabled: bool = True):
    """A TensorBoard ``SummaryWriter`` logging into ``run_dir`` (a no-op writer when disabled)."""
    if not enabled:
        return _NullWriter()
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(run_dir))
