"""The training-loop skeleton every trainer runs (``gan-train``, ``classify-train``, ``lungseg-train``).

A trainer supplies its step and its save; :class:`TrainingLoop` does the rest the same way for all three: the
progress bar, the loss meter read at logging steps only, the stop on a NaN or infinite loss before a
diverged model is saved, periodic and final saves, Ctrl-C or SIGTERM ending at a step where the run can save
(agreed by every rank under ``torchrun``), and the message saying how to resume::

    with TrainingLoop("lungseg-train", ckpt_path, save, LOSS_NAMES, device) as loop:
        if loop.run(step_fn, start=step, end=total, on_log=log):
            loop.say_stopped(run_dir)
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from .distributed import Dist
from .errors import cli_command
from .meter import LossMeter
from .signals import GracefulStop, stop_agreed


class TrainingLoop:
    """Runs a trainer's steps between saves; use it as a context manager (it holds the signal handlers).

    Args:
        command: the command that trains (``gan-train``), for the bar and the resume message.
        checkpoint: the file ``save`` writes, named when a loss diverges; None on ranks that do not write.
        save: ``save(step)`` writes the run's state after ``step`` steps (every rank calls it).
        loss_names: names of the ``(K,)`` losses a step returns.
        device: where the losses are.
        dist: this process's place in a ``torchrun`` job.
        log_every: steps between reads of the loss meter (and, under ``torchrun``, stop agreements).
        saved_step: the step of the checkpoint a resumed run started from; None for a new run.
        quiet: no progress bar.
    """

    def __init__(self, command: str, checkpoint: Path | None, save: Callable[[int], None], loss_names: tuple[str, ...],
                 device: torch.device, dist: Dist = Dist(), log_every: int = 50, saved_step: int | None = None,
                 quiet: bool = False):
        self.command, self.checkpoint, self.save, self.loss_names = command, checkpoint, save, loss_names
        self.device, self.dist, self.log_every, self.quiet = device, dist, log_every, quiet
        self.saved_step = saved_step
        self.step = saved_step or 0
        self.of = 0  # the step the last run() would have ended at

    def __enter__(self) -> TrainingLoop:
        self._stop = GracefulStop().__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        return self._stop.__exit__(*exc)

    def run(self, step_fn: Callable[[int], torch.Tensor], start: int, end: int, *, first_step: int = 0,
            save_every: int = 0, save_at_end: bool = True, on_log: Callable[[int, dict, tqdm], None] | None = None,
            after_step: Callable[[int], bool] | None = None, desc: str | None = None, leave: bool = True) -> bool:
        """Call ``step_fn(i)`` for ``i`` in ``start .. end - 1``; True when a signal stopped it (after a save).

        Args:
            step_fn: one training step; returns its losses ``(K,)`` on the device (no host sync).
            start, end: the positions to run, e.g. the remaining batches of an epoch.
            first_step: the run's step count at position 0 (the step of position ``i`` is
                ``first_step + i + 1``), so logging and stop agreement follow the run's steps.
            save_every: save every that many steps (0: never periodically).
            save_at_end: save after position ``end - 1``.
            on_log: ``on_log(step, mean_losses, bar)`` every ``log_every`` steps and after the last position.
            after_step: ``after_step(step)`` after each step; True asks for a save (e.g. an epoch ended).
            desc, leave: the progress bar's label (default: the command) and whether it stays when done.
        """
        meter = LossMeter(self.loss_names, self.device)
        stopped, self.of = False, first_step + end
        with tqdm(total=end, initial=start, desc=desc or self.command, unit="step", disable=self.quiet,
                  dynamic_ncols=True, leave=leave, file=sys.stderr) as bar:
            for i in range(start, end):
                self.step = first_step + i + 1
                meter.add(step_fn(i), self.step)
                bar.update()
                last = i + 1 == end
                if self.step % self.log_every == 0 or last:
                    meter.check_finite(self.checkpoint, self.saved_step)
                    means = meter.read()
                    if on_log is not None:
                        on_log(self.step, means, bar)
                stopped = stop_agreed(self._stop, self.dist, self.step, self.log_every, self.device)
                due = after_step(self.step) if after_step is not None else False
                if due or (save_every and self.step % save_every == 0) or (save_at_end and last) or stopped:
                    meter.check_finite(self.checkpoint, self.saved_step)
                    self.save_now()
                if stopped:
                    break
        meter.check_finite(self.checkpoint, self.saved_step)  # before the caller writes anything of this model
        return stopped

    def save_now(self) -> None:
        """Save the run's state at the current step, e.g. after work outside :meth:`run` (a validation)."""
        self.save(self.step)
        self.saved_step = self.step

    def say_stopped(self, resume: str | Path, where: str | None = None, extra: str = "") -> None:
        """On rank 0, where the run stopped, what it saved and the command that resumes it (``--resume
        resume``, then ``extra``)."""
        if self.dist.is_main:
            where = where or f"step {self.step} of {self.of}"
            print(f"stopped at {where}; saved {self.checkpoint}\n"
                  f"resume with: {cli_command()} {self.command} --resume {resume}{extra}", file=sys.stderr)
