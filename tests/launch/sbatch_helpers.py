"""A fake SLURM and the submissions that must be refused, shared by tests/launch/test_sbatch_values.py and the
sbatch injection drill (tests/reliability/test_sbatch_injection.py).

The submissions are real ones (``container-ssl submit`` without ``--dry-run``) against a fake ``sbatch`` on
PATH that records each call and answers like SLURM. A refused value must leave no trace: sbatch not called,
no job or output folder, no script.
"""

from __future__ import annotations

import shlex
import stat
from pathlib import Path

import pytest

from container_ssl.cli import main
from container_ssl.launch import submit

CPU = ["device=cpu", "model.name=container_light_nano", "data.num_workers=0"]
# a newline ends the #SBATCH comment: what follows would run as shell on the cluster
PAYLOAD = "x\n#SBATCH --wrap=id\ntouch /tmp/pwned-by-container-ssl #"  # the "#" hides the closing quote


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """A fake SLURM: ``sbatch`` appends its arguments to the returned file and says "Submitted batch job 4242"."""
    monkeypatch.setattr(submit, "slurm_partitions", lambda: [("gpu", True), ("debug", False)])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch-calls"
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(calls))}\necho "Submitted batch job 4242"\n')
    srun = bin_dir / "srun"  # submitit looks for it before it submits; the job never runs here
    srun.write_text("#!/bin/sh\nexit 1\n")
    for tool in (sbatch, srun):
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:{Path('/bin')}")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return calls


def refused(argv: list[str], tmp_path: Path, calls: Path, capsys) -> str:
    """Run ``container-ssl submit ARGV``; assert one ``error:`` line, exit 2 and no trace; return the line."""
    before = set(tmp_path.rglob("*"))
    try:
        code = main(["submit", *argv])
    except SystemExit as e:  # an argparse error of the top-level parser
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not calls.exists(), "sbatch was called"
    assert set(tmp_path.rglob("*")) == before, f"a refused submission wrote {set(tmp_path.rglob('*')) - before}"
    return err


def newline_case(tmp_path: Path, where: str) -> tuple[list[str], str]:
    """(argv of `container-ssl submit`, the option the error must name) for a newline in ``where``."""
    out = f"output_dir={tmp_path / 'run'}"
    ckpt = tmp_path / "checkpoint.pt"
    pretrain = ["pretrain", *CPU, out]
    if where in ("--name", "--partition", "--account", "--qos", "--constraint"):
        return [*pretrain, where, PAYLOAD], where
    if where == "--name (before COMMAND)":
        return ["--name", PAYLOAD, *pretrain], "--name"
    if where == "--slurm-extra value":
        return [*pretrain, "--slurm-extra", f"mail-type=END{PAYLOAD}"], "--slurm-extra"
    if where == "--slurm-extra key":
        return [*pretrain, "--slurm-extra", f"{PAYLOAD}=1"], "--slurm-extra"
    if where == "--job-dir":
        return [*pretrain, "--job-dir", str(tmp_path / "jobs") + PAYLOAD], "--job-dir"
    if where == "--job-dir (local)":
        return [*pretrain, "--cluster", "local", "--job-dir", str(tmp_path / "jobs") + "\x00"], "--job-dir"
    if where == "output_dir override":
        return ["pretrain", *CPU, f"output_dir={tmp_path / 'run'}{PAYLOAD}"], "pretrain output_dir"
    if where == "pretrain --output-dir":
        return ["pretrain", *CPU, "--output-dir", str(tmp_path / "run") + PAYLOAD], "pretrain --output-dir"
    if where == "output_dir in the YAML config":
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f'device: cpu\noutput_dir: "{tmp_path / "run"}\\n#SBATCH --wrap=id\\ntouch /tmp/x"\n')
        return ["pretrain", "--config", str(cfg), "model.name=container_light_nano", "data.num_workers=0"], \
            "output_dir"
    if where == "--config path":
        return ["pretrain", *CPU, out, "--config", str(tmp_path / "c.yaml") + PAYLOAD], "pretrain --config"
    if where == "knn --output-dir":
        ckpt.write_bytes(b"x")
        return ["knn", "--checkpoint", str(ckpt), "--device", "cpu", "--output-dir", str(tmp_path / "e") + PAYLOAD], \
            "knn --output-dir"
    raise AssertionError(where)


WHERE = ["--name", "--name (before COMMAND)", "--partition", "--account", "--qos", "--constraint",
         "--slurm-extra value", "--slurm-extra key", "--job-dir", "--job-dir (local)", "output_dir override",
         "pretrain --output-dir", "output_dir in the YAML config", "--config path", "knn --output-dir"]
