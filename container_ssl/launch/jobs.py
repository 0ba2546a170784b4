"""What runs inside a submitted job: the command, its distributed set-up, and preemption handling.

Why a module of its own: :mod:`container_ssl.launch.submit` runs on the login node (validate, render,
submit); everything here runs on the compute node, once per task, and again after every requeue. The job
object is pickled by submitit, so it holds only plain data (command name, arguments, resolved config).

Preemption and time limits. SLURM sends USR2 ``--signal-delay-s`` seconds before it kills the job (and on
preemption); submitit's handler for it calls :meth:`CommandJob.checkpoint`, requeues the job and exits,
*from inside the signal handler*. For pretraining that moment is arbitrary: it may fall between the
optimiser step and the teacher update, or inside a DDP collective, and saving the model state from there
would write an inconsistent checkpoint (and the RNG gather a save needs is a collective the other ranks
are not in). Relying on the last periodic save instead is consistent but throws away every step since it
(up to a whole epoch with the default ``checkpoint_every_steps=0``). So :class:`PreemptionGuard` takes the
signal over for the duration of the training loop: the handler only sets a flag; after every step all
ranks agree on it (an all-reduce of one number), stop at the same step boundary, and the trainer writes
``checkpoint.pt`` at exactly that position; then rank 0 hands over to submitit's own handler (checkpoint,
requeue, exit). The requeued job resumes from that file: no step is lost or repeated. If the loop does not
reach a step boundary within half the signal delay (a long online-kNN pass, a stuck data loader), the
guard falls back to submitit's stock behaviour, and the job resumes from the last periodic save.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit
import torch
import torch.distributed as dist

from ..commands import COMMANDS
from ..distributed import barrier, cleanup, max_over_ranks
from ..errors import EXPECTED_ERRORS, UserError
from ..run import CHECKPOINT


# ------------------------------------------------------------------------------------ command parsers
def command_module(command: str) -> Any:
    """The module implementing a ``container-ssl`` sub-command (``configure_parser``/``run``)."""
    return importlib.import_module(COMMANDS[command][0])


def command_parser(command: str) -> argparse.ArgumentParser:
    """The sub-command's own parser; its errors raise :class:`UserError` instead of exiting."""
    parser = argparse.ArgumentParser(prog=f"container-ssl {command}", allow_abbrev=False)
    command_module(command).configure_parser(parser)

    def error(message: str) -> None:
        raise UserError(f"{command} arguments: {message}; see `container-ssl {command} --help`")

    parser.error = error  # type: ignore[method-assign]
    return parser


# --------------------------------------------------------------------------------- distributed set-up
def export_distributed_env() -> str:
    """Export RANK/WORLD_SIZE/... for :func:`~container_ssl.distributed.init_distributed`.

    Returns how this process was launched: ``torchrun`` (it exported the variables already),
    ``submitit`` (SLURM or local tasks: exported here from submitit's job environment when there is more
    than one task) or ``single``.
    """
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return "torchrun"
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return "single"
    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        # CUDA_VISIBLE_DEVICES is left alone: init_distributed selects the GPU by LOCAL_RANK among the
        # node's GPUs, which is what SLURM's --gpus-per-node exposes to every task.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return "submitit"


def limit_threads() -> None:
    """One intra-op thread pool per task sized to its CPUs, so tasks sharing a node do not oversubscribe."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    if cpus := os.environ.get("SLURM_CPUS_PER_TASK"):
        torch.set_num_threads(max(1, int(cpus)))
    elif os.environ.get("SUBMITIT_EXECUTOR") == "local":
        tasks = int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, tasks)))


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


# ------------------------------------------------------------------------------------------ preemption
class PreemptionGuard:
    """Turn submitit's preemption/timeout signal into a stop at the next step boundary, then requeue.

    Use as a context manager around the training loop, pass :meth:`stop_requested` to the trainer, and
    call :meth:`finish` on every rank after it returns. Outside a submitit job (no handler installed for
    the signal) it does nothing.
    """

    def __init__(self, grace_s: float):
        self.signum = submitit.JobEnvironment._usr_sig()  # USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise
        self.grace_s = grace_s
        self.requested = False      # this process caught the signal
        self.stopped = False        # all ranks agreed to stop; the trainer saves at this step
        self._submitit_handler: Callable[..., Any] | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._handed_over = False   # submitit's handler was (or is being) called
        self._closed = False        # the trainer has returned
        self._pid = os.getpid()
        self._exit_process: Callable[[int], Any] = os._exit  # replaced in tests

    @property
    def active(self) -> bool:
        return self._submitit_handler is not None

    def __enter__(self) -> PreemptionGuard:  # noqa: PYI034 - typing.Self needs Python 3.11
        handler = signal.getsignal(self.signum)
        if callable(handler):
            self._pid = os.getpid()
            self._submitit_handler = handler
            signal.signal(self.signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        self._cancel_timer()
        if self._submitit_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._submitit_handler)

    # ------------------------------------------------------------------------------ signal and polling
    def _on_signal(self, signum: int, frame: Any) -> None:
        # SLURM signals every process of the step, data-loader workers included; forked workers inherit
        # this handler and must ignore the signal (only the training process stops and requeues)
        if self.requested or os.getpid() != self._pid:
            return
        self.requested = True
        print(f"caught {signal.Signals(signum).name} (preemption or time limit): stopping after the current "
              f"step to write a checkpoint and requeue (fallback in {self.grace_s:.0f} s)", flush=True)
        self._timer = threading.Timer(self.grace_s, self._fallback)
        self._timer.daemon = True
        self._timer.start()

    def stop_requested(self) -> bool:
        """Polled by the trainer after every step, on every rank: stop when any rank caught the signal."""
        nccl = dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        flag = bool(max_over_ranks([int(self.requested)], device)[0])
        if flag:
            with self._lock:
                if not self._handed_over:
                    self.stopped = True
                    self._cancel_timer()
        return flag

    # -------------------------------------------------------------------------------------- hand-over
    def finish(self) -> None:
        """After the trainer returned, on every rank: requeue if it stopped because of the signal."""
        self._cancel_timer()
        if self._submitit_handler is None:
            return
        with self._lock:
            if self._handed_over:       # the fallback is requeueing: it ends this process
                while True:
                    time.sleep(1)
            self._closed = True         # a late fallback must not requeue a run that has ended
            if not self.stopped:
                return
            self._handed_over = True
        print("checkpoint written at the step boundary; requeueing", flush=True)
        try:
            if _rank() == 0:
                # submitit's own handler: calls CommandJob.checkpoint(), requeues, then exits (SystemExit)
                # or raises UncompletedJobError when the job has timed out too many times.
                self._submitit_handler(self.signum, None)
        finally:
            _flush()
            barrier()  # the other ranks leave only after rank 0 has requeued the job
        raise SystemExit(-1)

    def _fallback(self) -> None:
        """Timer thread: the loop did not reach a step boundary in time; use submitit's stock behaviour."""
        if _rank() != 0:
            return  # only rank 0 requeues; SLURM stops the other ranks with the job
        with self._lock:
            if self.stopped or self._handed_over or self._closed:
                return
            self._handed_over = True
        print(f"no step boundary within {self.grace_s:.0f} s of the signal: requeueing from the last saved "
              "checkpoint", flush=True)
        code = 1
        try:
            self._submitit_handler(self.signum, None)  # type: ignore[misc]
        except SystemExit as e:  # raised in this thread, it would end only the thread
            code = e.code if isinstance(e.code, int) else 1
        except Exception as e:  # noqa: BLE001 - e.g. timed out too many times: the job ends here
            print(f"error: could not requeue: {e}", file=sys.stderr)
        _flush()
        self._exit_process(code & 0xFF)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# ------------------------------------------------------------------------------------------------ job
def _fingerprint(path: Path) -> tuple[int, int, int] | None:
    """Identity of a file (inode, mtime, size): tells whether the job replaced it since it first started."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class CommandJob(submitit.helpers.Checkpointable):
    """A ``container-ssl`` sub-command as a submitit job; requeued with the same arguments on preemption.

    ``config`` is the resolved pretraining config (validated at submission, so a config file edited after
    submitting does not change a running job or its requeues); the other commands are re-parsed from
    ``argv``. ``cwd`` is the submission directory, so relative paths mean the same inside the job.
    """

    def __init__(self, command: str, argv: list[str], cwd: str, config: dict[str, Any] | None = None,
                 resume: str | None = None, auto_resume: bool = True, signal_delay_s: int = 120):
        self.command = command
        self.argv = list(argv)
        self.cwd = cwd
        self.config = config
        self.resume = resume
        self.auto_resume = auto_resume
        self.signal_delay_s = signal_delay_s
        self.attempt = 0
        self.initial_checkpoint: tuple[int, int, int] | None = None
        self.fingerprinted = False

    def __repr__(self) -> str:
        return f"CommandJob(container-ssl {self.command} {shlex.join(self.argv)})"

    @property
    def command_line(self) -> str:
        return shlex.join(["container-ssl", self.command, *self.argv])

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on preemption/timeout (rank 0): the same command, one attempt later."""
        nxt = copy.copy(self)
        nxt.attempt = self.attempt + 1
        return submitit.helpers.DelayedSubmission(nxt, *args, **kwargs)

    def __call__(self) -> dict[str, Any]:
        os.chdir(self.cwd)
        launcher = export_distributed_env()
        limit_threads()
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{self.command_line}\nattempt {self.attempt + 1} (SLURM_RESTART_COUNT={restarts}), "
                  f"launcher {launcher}, world size {os.environ.get('WORLD_SIZE', '1')}", flush=True)
        try:
            result = self._pretrain() if self.command == "pretrain" else self._run_command()
        except EXPECTED_ERRORS as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise
        return {"command": self.command, "attempt": self.attempt, "restart_count": restarts,
                "launcher": launcher, **result}

    # ------------------------------------------------------------------------------------------ pretrain
    def _pretrain(self) -> dict[str, Any]:
        # the training stack (trainer, omegaconf) loads only in pretraining jobs, not with `submit`
        from omegaconf import OmegaConf

        from ..config import PretrainConfig
        from ..ssl.trainer import pretrain

        cfg = OmegaConf.merge(OmegaConf.structured(PretrainConfig), self.config or {})
        resume, auto_resume = self._resume_flags(Path(cfg.output_dir) / CHECKPOINT)
        with PreemptionGuard(grace_s=max(5.0, self.signal_delay_s / 2)) as guard:
            summary = pretrain(cfg, resume=resume, auto_resume=auto_resume, stop_requested=guard.stop_requested)
            guard.finish()  # requeues and exits when the loop stopped because of the signal
        cleanup()
        return {"output_dir": str(cfg.output_dir), "summary": summary}

    def _resume_flags(self, latest: Path) -> tuple[str | None, bool]:
        """``--resume``/``--no-resume`` apply to the first start; a requeue continues from this job's save."""
        if not self.fingerprinted:
            self.initial_checkpoint, self.fingerprinted = _fingerprint(latest), True
        elif (now := _fingerprint(latest)) is not None and now != self.initial_checkpoint:
            return None, True
        return self.resume, self.auto_resume

    # ------------------------------------------------------------------------------------ other commands
    def _run_command(self) -> dict[str, Any]:
        args = command_parser(self.command).parse_args(self.argv)
        code = int(command_module(self.command).run(args) or 0)
        if code:
            raise RuntimeError(f"{self.command_line} exited with status {code}")
        return {"exit_code": code}
