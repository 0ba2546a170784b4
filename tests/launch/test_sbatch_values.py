"""What reaches the sbatch script: no value can end an ``#SBATCH`` line, clean values round-trip, numbers are in range.

The submissions here are real ones (``container-ssl submit`` without ``--dry-run``) against a fake ``sbatch``
on PATH that records each call and answers like SLURM; the script checked is the file submitit wrote and
handed to it. A refused value must leave no trace: sbatch not called, no job or output folder, no script.
"""

from __future__ import annotations

import re
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


def _refused(argv: list[str], tmp_path: Path, calls: Path, capsys) -> str:
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


def _case(tmp_path: Path, where: str) -> tuple[list[str], str]:
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


@pytest.mark.parametrize("where", WHERE)
def test_a_newline_anywhere_is_refused_naming_the_option_before_anything_is_written(tmp_path, cluster, capsys,
                                                                                  where):
    argv, option = _case(tmp_path, where)
    err = _refused(argv, tmp_path, cluster, capsys)
    assert err.startswith(f"error: {option} ") and "control character" in err, err


@pytest.mark.parametrize("char", ["\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\x0b"])
def test_every_control_character_is_refused(tmp_path, cluster, capsys, char):
    err = _refused(["pretrain", *CPU, f"output_dir={tmp_path / 'run'}", "--name", f"a{char}b"], tmp_path, cluster,
                   capsys)
    assert err.startswith("error: --name ") and f"control character {char!r}" in err, err


def test_the_home_and_working_directories_are_checked_too(tmp_path, cluster, capsys, monkeypatch):
    home = tmp_path / "home\nrm -rf x"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    err = _refused(["pretrain", *CPU, f"output_dir={tmp_path / 'run'}", "--job-dir", "~/jobs"], tmp_path, cluster,
                   capsys)
    assert err.startswith("error: --job-dir ") and "control character '\\n'" in err, err
    monkeypatch.chdir(home)
    err = _refused(["pretrain", *CPU, "output_dir=run"], tmp_path, cluster, capsys)
    assert err.startswith("error: the working directory "), err


def _directives(script: str) -> dict[str, str]:
    """``#SBATCH --key=value`` lines, each value read back by the shell's own quoting rules."""
    found = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            (arg,) = shlex.split(line[len("#SBATCH "):])
            key, _, value = arg[2:].partition("=")
            found[key] = value
    return found


def test_clean_values_reach_the_real_sbatch_script_exactly(tmp_path, cluster, capsys):
    out = tmp_path / "run one"  # a space: quoted in the script and in the printed hint
    name = "exp #1 'quoted' $(touch x) `id`; echo"
    code = main(["submit", "pretrain", *CPU, f"output_dir={out}", "--name", name, "--partition", "gpu",
                 "--account", "vision lab", "--qos", "high", "--constraint", "volta32gb|a100",
                 "--slurm-extra", "mail-type=END,FAIL", "--slurm-extra", "comment=a;b $HOME", "--slurm-extra",
                 "exclusive=", "--mem-gb", "0.5", "--nodes", "2", "--timeout-min", "1200", "--signal-delay-s",
                 "65535"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    (call,) = cluster.read_text().splitlines()
    script = Path(call).read_text()  # submitit keeps the file it submitted (a link in the job folder)
    assert Path(call).resolve() == (out / "submitit" / "4242_submission.sh").resolve()
    before_command = script.split("\n# command\n")[0].splitlines()
    assert all(line == "" or line.startswith("#") for line in before_command), before_command
    d = _directives(script)
    assert d["job-name"] == name and d["partition"] == "gpu" and d["account"] == "vision lab"
    assert d["qos"] == "high" and d["constraint"] == "volta32gb|a100" and d["mail-type"] == "END,FAIL"
    assert d["comment"] == "a;b $HOME" and d["exclusive"] == "" and d["mem"] == "512MB"
    assert d["nodes"] == "2" and d["time"] == "1200" and d["signal"] == "USR2@65535"
    assert d["output"] == f"{out}/submitit/%j_0_log.out" and d["error"] == f"{out}/submitit/%j_0_log.err"
    (hint,) = [line for line in printed.splitlines() if line.startswith("follow it with: ")]
    assert shlex.split(hint[len("follow it with: "):]) == ["tail", "-f", f"{out}/submitit/4242_0_log.out"]


@pytest.mark.parametrize("option, value, message", [
    ("--nodes", "0", "must be at least 1"),
    ("--gpus-per-node", "-1", "must be at least 0"),
    ("--tasks-per-node", "0", "must be at least 1"),
    ("--cpus-per-task", "0", "must be at least 1"),
    ("--timeout-min", "0", "must be at least 1"),
    ("--timeout-min", "1.5", "expected a whole number"),
    ("--signal-delay-s", "0", "must be at least 1"),
    ("--signal-delay-s", "65536", "must be at most 65535"),
    ("--max-timeouts", "-1", "must be at least 0"),
    ("--mem-gb", "0", "at least 1 MB"),
    ("--mem-gb", "0.0001", "at least 1 MB"),  # would be rendered --mem=0MB: all of the node's memory
    ("--mem-gb", "-4", "at least 1 MB"),
    ("--mem-gb", "nan", "finite"),
    ("--mem-gb", "inf", "finite"),
    ("--mem-gb", "lots", "expected a number of GB"),
])
@pytest.mark.parametrize("position", ["after", "before"])
def test_numeric_options_have_a_range_named_in_the_error(tmp_path, cluster, capsys, option, value, message,
                                                          position):
    argv = ["pretrain", *CPU, f"output_dir={tmp_path / 'run'}"]
    err = _refused([*argv, option, value] if position == "after" else [option, value, *argv], tmp_path, cluster,
                   capsys)
    assert re.search(rf"argument {option}: .*{re.escape(message)}", err), err


def test_sbatch_without_srun_is_a_one_line_error(tmp_path, cluster, capsys, monkeypatch):
    (tmp_path / "bin" / "srun").unlink()
    # only the fake tools: a machine with SLURM installed has a real srun in /usr/bin
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    err = _refused(["pretrain", *CPU, f"output_dir={tmp_path / 'run'}"], tmp_path, cluster, capsys)
    assert "srun not found on PATH" in err and "--cluster local" in err, err
