"""``container-ssl submit``: run ``pretrain``, ``knn``, ``linear`` or ``finetune`` as a SLURM job (or as local
processes) through submitit.

Why validate here, on the login node: a job that waits hours in the queue and then dies on a typo in the
config, a missing partition or a GPU count that does not match the processes costs the user a day. So the
sub-command's arguments are parsed with that command's own parser, the pretraining config is loaded and
resolved, the resources are checked against the command (one process per GPU; evaluation runs as one
process) and against ``sinfo``, and the output and log folders are probed for writing, all before
anything is submitted. Submitting never waits for the job: it prints the job id, the log files and how to
follow them. What runs on the compute node lives in :mod:`container_ssl.launch.jobs`.

Why no value may hold a control character: submitit shell-quotes every sbatch option, but it writes them
as ``#SBATCH --key=value`` comment lines. A newline in a job name, partition, ``--slurm-extra`` value or
folder ends the comment, the rest of the value runs as shell on the cluster, and sbatch stops reading the
directives after it. So every value that reaches the script (or the local executor's environment) is
refused, naming its option, before anything is written.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..argtypes import float_range, int_range
from ..errors import UserError
from ..run import CHECKPOINT, EVAL_DIR
from .jobs import CommandJob, command_parser

SUBMITTABLE = ("pretrain", "knn", "linear", "finetune")
DEFAULT_TIMEOUT_MIN = 4320
DEFAULT_SIGNAL_DELAY_S = 120
DEFAULT_MAX_TIMEOUTS = 3
SLURM_MAX_SIGNAL_DELAY_S = 65535  # sbatch --signal: "sig_time must be an integer between 0 and 65535"
# sbatch options this command sets itself; --slurm-extra may not override them
MANAGED_SBATCH = {"nodes": "--nodes", "ntasks-per-node": "--tasks-per-node", "gpus-per-node": "--gpus-per-node",
                  "cpus-per-task": "--cpus-per-task", "time": "--timeout-min", "partition": "--partition",
                  "account": "--account", "qos": "--qos", "constraint": "--constraint", "mem": "--mem-gb",
                  "signal": "--signal-delay-s", "job-name": "--name", "output": "--job-dir", "error": "--job-dir",
                  "open-mode": None, "wckey": None}
# sbatch reads --mem=0 as "all of the node's memory": at least 1 MB
_MEMORY_GB = float_range(lo=1 / 1024, what="a number of GB", says="a finite number of GB, at least 1 MB (0.001)")

EPILOG = """\
The arguments after COMMAND are that command's own (see `container-ssl COMMAND --help`); the options
above may come before or after them. Examples:

  container-ssl submit pretrain --config configs/pretrain/imagenet.yaml output_dir=/ckpt/run1 \\
      --nodes 2 --gpus-per-node 8 --partition gpu --timeout-min 4320
  container-ssl submit knn --checkpoint /ckpt/run1/checkpoint.pt --partition gpu --gpus-per-node 1
  container-ssl submit pretrain --config configs/pretrain/cifar10_demo.yaml --cluster local --dry-run

Preemption and time limits: SLURM sends USR2 --signal-delay-s seconds before it stops the job (and when it
preempts it). Pretraining then stops at the end of the current step on all ranks, writes
OUTPUT_DIR/checkpoint.pt at exactly that step, and the job is requeued with the same command; the requeued
job resumes from that checkpoint (same metrics.jsonl and TensorBoard run). Evaluations are rerun.
"""


# ----------------------------------------------------------------------------------------------- CLI
def _add_options(p: argparse.ArgumentParser) -> None:
    """The submit options; the defaults that depend on the command (GPUs, tasks, CPUs) are resolved in :func:`plan`."""
    g = p.add_argument_group("where")
    g.add_argument("--cluster", choices=("slurm", "local", "auto"), default="slurm",
                   help="slurm (default): sbatch through submitit; local: N processes on this machine "
                        "(submitit's LocalExecutor, for machines without SLURM); auto: slurm when sbatch is "
                        "on PATH, else local")
    g.add_argument("--partition", help="SLURM partition (default: the cluster's default partition)")
    g.add_argument("--account", help="SLURM account to charge")
    g.add_argument("--qos", help="SLURM quality of service")
    g.add_argument("--constraint", help="SLURM node features, e.g. volta32gb")
    g.add_argument("--slurm-extra", action="append", metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. --slurm-extra mail-type=END; KEY= for a bare flag "
                        "(repeatable)")
    g.add_argument("--job-dir", metavar="DIR",
                   help="submitit's folder for the sbatch script, pickles and per-task logs; must be visible "
                        "from every node (default: OUTPUT_DIR/submitit)")
    g.add_argument("--name", help="job name (default: container-ssl-COMMAND)")
    r = p.add_argument_group("resources")
    r.add_argument("--nodes", type=int_range(1), default=1, help="nodes (default 1)")
    r.add_argument("--gpus-per-node", type=int_range(0),
                   help="GPUs per node (default: 0 when the command runs on the CPU, i.e. device=cpu, else 1)")
    r.add_argument("--tasks-per-node", type=int_range(1),
                   help="processes per node (default: pretraining: one per GPU, or 1 without GPUs; "
                        "evaluations: 1)")
    r.add_argument("--cpus-per-task", type=int_range(1),
                   help="CPUs per process (default: data-loading workers + 1)")
    r.add_argument("--mem-gb", type=_MEMORY_GB, help="memory per node in GB (default: the partition's)")
    t = p.add_argument_group("time limit and preemption")
    t.add_argument("--timeout-min", type=int_range(1), default=DEFAULT_TIMEOUT_MIN,
                   help=f"time limit in minutes (default {DEFAULT_TIMEOUT_MIN} = 3 days); a job that reaches "
                        "it is requeued and continues")
    t.add_argument("--signal-delay-s", type=int_range(1, SLURM_MAX_SIGNAL_DELAY_S), default=DEFAULT_SIGNAL_DELAY_S,
                   help=f"SLURM sends USR2 this many seconds before the time limit (default "
                        f"{DEFAULT_SIGNAL_DELAY_S}). Within this window pretraining must finish its current "
                        "step, write checkpoint.pt and requeue: make it larger than a step plus a checkpoint "
                        "write. If no step ends within half of it, the job is requeued from the last saved "
                        "checkpoint instead (see checkpoint_every_steps)")
    t.add_argument("--max-timeouts", type=int_range(0), default=DEFAULT_MAX_TIMEOUTS,
                   help=f"requeues after reaching the time limit before giving up (default "
                        f"{DEFAULT_MAX_TIMEOUTS}); preemptions do not count")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved parameters and the sbatch script; submit nothing")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.allow_abbrev = False  # `--time` of a sub-command must never be read as --timeout-min
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = ("Run a container-ssl command as a SLURM job through submitit (or as local "
                          "processes with --cluster local). Arguments are validated before submission; "
                          "submitting returns at once with the job id and log paths.")
    parser.epilog = EPILOG
    _add_options(parser)
    parser.add_argument("submit_command", choices=SUBMITTABLE, metavar="COMMAND", help=" | ".join(SUBMITTABLE))
    parser.add_argument("command_args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="the command's own arguments (config, overrides, --checkpoint, ...)")

    def error(message: str) -> None:  # one line, as for the options after COMMAND (see _split_options)
        parser.exit(2, f"error: {_option_error(message)}\n")

    parser.error = error  # type: ignore[method-assign]


def _option_error(message: str) -> str:
    return f"submit: {message}; see `container-ssl submit --help`"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="container-ssl submit", allow_abbrev=False)
    configure_parser(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if any(a in ("-h", "--help") for a in args.command_args or []):  # submit's options, then the command's own
        _parser().print_help()
        print(f"\n--- arguments of `container-ssl {args.submit_command}` ---")
        command_parser(args.submit_command).print_help()
        return 0
    p = plan(args)
    print(render(p) if p.dry_run else submitted_message(p, launch(p)))
    return 0


# ---------------------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """A validated submission: what runs, where, with which resources."""

    argv: list[str]
    cluster: str
    job: CommandJob
    output_dir: Path
    job_dir: Path
    name: str
    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    timeout_min: int
    signal_delay_s: int
    max_timeouts: int
    mem_gb: float | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    def parameters(self) -> dict[str, Any]:
        """Executor parameters: sbatch's names for SLURM, the LocalExecutor's for local runs."""
        if self.cluster == "local":
            return {"timeout_min": self.timeout_min, "tasks_per_node": self.tasks_per_node,
                    "gpus_per_node": self.gpus_per_node, "signal_delay_s": self.signal_delay_s, "nodes": 1}
        params: dict[str, Any] = {
            "job_name": self.name, "nodes": self.nodes, "ntasks_per_node": self.tasks_per_node,
            "cpus_per_task": self.cpus_per_task, "time": self.timeout_min, "signal_delay_s": self.signal_delay_s,
        }
        if self.gpus_per_node:  # an explicit 0 is refused by clusters without GPUs (gres)
            params["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb is not None:
            gb = self.mem_gb
            params["mem"] = f"{int(gb)}GB" if gb == int(gb) else f"{int(gb * 1024)}MB"
        params.update({k: getattr(self, k) for k in ("partition", "account", "qos", "constraint") if getattr(self, k)})
        if self.extra:
            params["additional_parameters"] = dict(self.extra)
        return params


def plan_from_argv(argv: Sequence[str]) -> Plan:
    """The plan for ``container-ssl submit ARGV`` (what :func:`run` does, minus printing/submitting)."""
    return plan(_parser().parse_args(list(argv)))


def plan(args: argparse.Namespace) -> Plan:
    """Parse the command's arguments, resolve defaults and check everything that can be checked here."""
    opts, command_argv = _split_options(args)
    command = args.submit_command
    texts = ("name", "partition", "account", "qos", "constraint", "job_dir")  # the options that reach sbatch as text
    _refuse_control_characters([*((f"--{key.replace('_', '-')}", getattr(opts, key)) for key in texts),
                                *(("--slurm-extra", item) for item in opts.slurm_extra or []),
                                *_argv_values(command, command_argv), ("the working directory", os.getcwd())])
    cluster = opts.cluster
    if cluster == "auto":
        cluster = "slurm" if shutil.which("sbatch") else "local"
    cmd_args = command_parser(command).parse_args(command_argv)
    target = _pretrain_target(cmd_args) if command == "pretrain" else _eval_target(command, cmd_args)

    gpus = opts.gpus_per_node
    if gpus is None:
        gpus = 0 if target.device == "cpu" else 1
        if cluster == "local" and target.device == "auto":
            gpus = min(1, _local_gpus())
    tasks = opts.tasks_per_node or (gpus if command == "pretrain" and gpus > 0 else 1)
    timeout_min, delay, notes = opts.timeout_min, opts.signal_delay_s, target.notes

    _check_resources(command, target.device, cluster, opts.nodes, gpus, tasks)
    if delay >= timeout_min * 60:
        raise UserError(f"--signal-delay-s {delay} is not shorter than the time limit ({timeout_min} min): the "
                        "job would be signalled before it starts; lower --signal-delay-s or raise --timeout-min")
    if timeout_min < 10:
        notes.append(f"--timeout-min {timeout_min} < 10: submitit counts every USR2 (also a preemption) as a "
                     f"time-out, so the job is requeued at most --max-timeouts times")

    partition = opts.partition
    if cluster == "slurm":
        partition = _check_partition(partition)
        if not opts.dry_run and not shutil.which("sbatch"):
            raise UserError("sbatch not found on PATH: submit from a SLURM login node, or use --cluster local")
        if not opts.dry_run and not shutil.which("srun"):  # submitit's SlurmExecutor refuses to start without it
            raise UserError("srun not found on PATH (sbatch is): submitit starts the tasks with srun; submit from a "
                            "SLURM login node, or use --cluster local")

    output_dir = target.output_dir
    job_dir = (Path(opts.job_dir).expanduser() if opts.job_dir else output_dir / "submitit").absolute()
    # the output dir may come from the YAML config, the job dir from it or from $HOME (expanduser)
    _refuse_control_characters([("output_dir" if command == "pretrain" else "--output-dir", str(output_dir)),
                                ("--job-dir", str(job_dir))])
    _check_writable(output_dir, "output dir", "choose another output dir")
    _check_writable(job_dir, "--job-dir", "pass another --job-dir")

    job = CommandJob(command, command_argv, cwd=os.getcwd(), config=target.config, resume=target.resume,
                     auto_resume=target.auto_resume, signal_delay_s=delay)
    return Plan(argv=command_argv, cluster=cluster, job=job, output_dir=output_dir, job_dir=job_dir,
                name=opts.name or f"container-ssl-{command}", nodes=opts.nodes, tasks_per_node=tasks,
                gpus_per_node=gpus, cpus_per_task=opts.cpus_per_task or target.workers + 1, timeout_min=timeout_min,
                signal_delay_s=delay, max_timeouts=opts.max_timeouts, mem_gb=opts.mem_gb, partition=partition,
                account=opts.account, qos=opts.qos, constraint=opts.constraint,
                extra=_parse_extra(opts.slurm_extra or []), dry_run=opts.dry_run, notes=notes)


def _split_options(args: argparse.Namespace) -> tuple[argparse.Namespace, list[str]]:
    """Submit options may also follow COMMAND: take them out of its arguments.

    They are parsed into a copy of the options given before COMMAND, so argparse keeps those (and their
    defaults) unless given again: later ones win, and --slurm-extra appends.
    """
    later = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_options(later)

    def error(message: str) -> None:
        raise UserError(_option_error(message))

    later.error = error  # type: ignore[method-assign]
    return later.parse_known_args(list(args.command_args or []), namespace=argparse.Namespace(**vars(args)))


@dataclass
class _Target:
    """What the command needs and where it writes, as read from its own arguments."""

    device: str
    workers: int
    output_dir: Path
    config: dict[str, Any] | None = None
    resume: str | None = None
    auto_resume: bool = True
    notes: list[str] = field(default_factory=list)


def _pretrain_target(args: argparse.Namespace) -> _Target:
    # the training stack (trainer, omegaconf) loads only when a pretraining job is planned
    from ..config import to_dict
    from ..ssl.pretrain_cli import config_from_args

    cfg = config_from_args(args)
    out = Path(cfg.output_dir).expanduser().absolute()
    cfg.output_dir = str(out)  # the job and its requeues write exactly here, whatever their cwd
    notes = []
    resume = None
    if args.resume:
        resume = str(Path(args.resume).expanduser().absolute())
        if not Path(resume).is_file():
            raise UserError(f"--resume {args.resume}: no such checkpoint file; pass an existing checkpoint.pt")
    elif not args.no_resume and (out / CHECKPOINT).is_file():
        notes.append(f"{out / 'checkpoint.pt'} exists: the job continues from it (--no-resume starts afresh)")
    return _Target(device=cfg.device, workers=int(cfg.data.num_workers), output_dir=out, config=to_dict(cfg),
                   resume=resume, auto_resume=not args.no_resume, notes=notes)


def _eval_target(command: str, args: argparse.Namespace) -> _Target:
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint and not Path(checkpoint).expanduser().is_file():
        raise UserError(f"--checkpoint {checkpoint}: no such file; pass the run's checkpoint.pt")
    if args.output_dir:
        out = Path(args.output_dir).expanduser()
    elif checkpoint:
        out = Path(checkpoint).expanduser().absolute().parent / EVAL_DIR
    else:
        raise UserError(f"{command}: pass --output-dir (there is no checkpoint to put the results next to)")
    return _Target(device=args.device, workers=int(args.num_workers), output_dir=out.absolute())


# ------------------------------------------------------------------------------------------- checks
def _check_resources(command: str, device: str, cluster: str, nodes: int, gpus: int, tasks: int) -> None:
    what = "the config" if command == "pretrain" else f"{command} (--device {device})"
    if device == "cpu" and gpus > 0:
        raise UserError(f"--gpus-per-node {gpus} but {what} runs on the CPU (device=cpu): drop --gpus-per-node, "
                        "or set device=cuda / device=auto")
    if device == "cuda" and gpus == 0:
        raise UserError(f"{what} needs a GPU (device=cuda) but --gpus-per-node is 0: pass --gpus-per-node N")
    if command != "pretrain":
        if nodes * tasks > 1:
            raise UserError(f"{command} runs as one process: use --nodes 1 --tasks-per-node 1 "
                            f"(got {nodes} x {tasks})")
        if gpus > 1:
            raise UserError(f"{command} uses one GPU: pass --gpus-per-node 1 (got {gpus})")
    elif gpus > 0 and tasks != gpus:
        raise UserError(f"--tasks-per-node {tasks} does not match --gpus-per-node {gpus}: pretraining runs one "
                        f"process per GPU; pass --tasks-per-node {gpus} or leave it out")
    if cluster == "local":
        if nodes > 1:
            raise UserError(f"--cluster local runs on this machine only: use --nodes 1 (got {nodes})")
        if gpus > _local_gpus():
            raise UserError(f"--gpus-per-node {gpus} but this machine has {_local_gpus()} GPU(s) for --cluster local")


def _local_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def slurm_partitions() -> list[tuple[str, bool]] | None:
    """``(name, is_default)`` for each partition from ``sinfo``; None when sinfo is missing or fails."""
    try:  # no sinfo on PATH is an OSError too
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    parts: dict[str, bool] = {}  # sinfo may list a partition once per node state
    for name in out.stdout.split():
        parts[name.rstrip("*")] = parts.get(name.rstrip("*"), False) or name.endswith("*")
    return list(parts.items()) or None


def _check_partition(partition: str | None) -> str | None:
    parts = slurm_partitions()
    if parts is None:  # no sinfo here (e.g. a dry run on a laptop): sbatch checks it
        return partition
    names = [n for n, _ in parts]
    if partition:
        if partition not in names:
            raise UserError(f"--partition {partition}: no such partition on this cluster; "
                            f"available: {', '.join(names)}")
        return partition
    if not any(default for _, default in parts):
        raise UserError(f"this cluster has no default partition: pass --partition (one of {', '.join(names)})")
    return None  # sbatch uses the default one


def _check_writable(path: Path, what: str, hint: str) -> None:
    """Probe the folder (or its nearest existing parent) for writing; creates nothing."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {path} cannot be created: {probe} is not a folder; {hint}")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UserError(f"{what} {path} is not writable ({e.strerror or e} in {probe}); {hint}") from None


def _control_character(value: str) -> str | None:
    return next((c for c in value if unicodedata.category(c) == "Cc"), None)


def _refuse_control_characters(named: Iterable[tuple[str, str | None]]) -> None:
    """Refuse a value with a control character (``\\n``, ``\\r``, ``\\t``, NUL, ESC...), naming its option."""
    for name, value in named:
        if char := _control_character(value or ""):
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            raise UserError(f"{name} {shown}: control character {char!r} not allowed (in the sbatch script a "
                            "newline would end the #SBATCH line and run the rest as shell); remove it")


def _argv_values(command: str, argv: list[str]) -> list[tuple[str, str | None]]:
    """The command's arguments, each named by its option or override key (``pretrain output_dir``)."""
    named, option = [], None
    for i, arg in enumerate(argv):
        if arg.startswith("-"):
            name, option = arg.split("=", 1)[0], (None if "=" in arg else arg)
        elif option:  # the value of the option before it
            name, option = option, None
        else:  # a key=value override, or a positional argument
            name = arg.split("=", 1)[0] if "=" in arg else f"argument {i + 1}"
        named.append((f"{command} {name}" if _control_character(name) is None else f"{command} argument {i + 1}",
                      arg))
    return named


_EXTRA_KEY = re.compile(r"[a-z][a-z0-9-]*")


def _parse_extra(items: list[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-").replace("_", "-")
        if not sep or not _EXTRA_KEY.fullmatch(key):
            raise UserError(f"--slurm-extra {item}: expected KEY=VALUE with an sbatch option name, "
                            "e.g. --slurm-extra mail-type=END")
        if key in MANAGED_SBATCH:
            own = MANAGED_SBATCH[key]
            raise UserError(f"--slurm-extra {item}: {key} is set by container-ssl submit"
                            + (f"; use {own}" if own else ""))
        # submitit writes the key with '_' turned into '-' and shell-quotes the value; an empty value
        # gives a bare flag (e.g. --slurm-extra exclusive=)
        extra[key.replace("-", "_")] = value if value else True
    return extra


# ------------------------------------------------------------------------------------- render/launch
def sbatch_script(p: Plan) -> str:
    """The sbatch script submitit would write for this plan (built by submitit itself)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(p.job_dir))])
    return _make_sbatch_string(command=command, folder=p.job_dir, **p.parameters())


def render(p: Plan) -> str:
    lines = [f"cluster: {p.cluster}", f"command: {p.job.command_line}", f"working dir: {p.job.cwd}",
             f"output dir: {p.output_dir}", f"job dir: {p.job_dir}",
             (f"processes: {p.nodes} node(s) x {p.tasks_per_node} task(s) = {p.world_size}, "
              f"{p.gpus_per_node} GPU(s) per node"), f"max timeouts: {p.max_timeouts}", "executor parameters:"]
    lines += [f"  {k}: {v}" for k, v in sorted(p.parameters().items())]
    lines += [f"note: {n}" for n in p.notes]
    if p.cluster == "slurm":
        lines += ["", "sbatch script:", sbatch_script(p)]
    else:
        lines += ["", f"submitit LocalExecutor: {p.tasks_per_node} process(es) on this machine"]
    return "\n".join(lines)


def launch(p: Plan) -> Any:
    """Submit the plan; returns the submitit job without waiting for it."""
    import submitit
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    try:
        p.job_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --job-dir {p.job_dir}: {e.strerror or e}; pass another --job-dir") from None
    executor = (submitit.LocalExecutor if p.cluster == "local" else submitit.SlurmExecutor)(
        folder=p.job_dir, max_num_timeout=p.max_timeouts)
    try:
        executor.update_parameters(**p.parameters())
    except ValueError as e:
        raise UserError(f"submitit refused the job parameters: {str(e).splitlines()[0]}") from None
    try:
        return executor.submit(p.job)
    except (FailedJobError, FailedSubmissionError) as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise UserError(f"sbatch refused the job: {first}; check the partition and resources "
                        "(`sinfo -o '%P %D %c %m %G'`)") from None


def submitted_message(p: Plan, job: Any) -> str:
    stdout, stderr = job.paths.stdout, job.paths.stderr
    where = f"partition {p.partition}" if p.partition else ("this machine" if p.cluster == "local" else
                                                            "the default partition")
    lines = [f"submitted job {job.job_id}: {p.job.command_line}",
             f"  {p.nodes} node(s) x {p.tasks_per_node} task(s), {p.gpus_per_node} GPU(s) per node, {where}",
             f"  output dir: {p.output_dir}",
             f"  stdout: {stdout}",
             f"  stderr: {stderr}"]
    if p.world_size > 1:
        lines.append(f"  (one log pair per task: {Path(str(stdout)).name.replace('_0_', '_<task>_')})")
    lines += [f"note: {n}" for n in p.notes]
    lines.append(f"follow it with: tail -f {shlex.quote(str(stdout))}")
    return "\n".join(lines)
