"""What reaches the sbatch script: no value can end an ``#SBATCH`` line, clean values round-trip, numbers are in range.

The submissions here are real ones (``container-ssl submit`` without ``--dry-run``) against a fake ``sbatch``
on PATH that records each call and answers like SLURM; the script checked is the file submitit wrote and
handed to it. A refused value must leave no trace: sbatch not called, no job or output folder, no script.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from container_ssl.cli import main
from tests.launch.sbatch_helpers import CPU, WHERE, newline_case, refused


@pytest.mark.parametrize("where", WHERE)
def test_a_newline_anywhere_is_refused_naming_the_option_before_anything_is_written(tmp_path, cluster, capsys,
                                                                                  where):
    argv, option = newline_case(tmp_path, where)
    err = refused(argv, tmp_path, cluster, capsys)
    assert err.startswith(f"error: {option} ") and "control character" in err, err


@pytest.mark.parametrize("char", ["\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\x0b"])
def test_every_control_character_is_refused(tmp_path, cluster, capsys, char):
    err = refused(["pretrain", *CPU, f"output_dir={tmp_path / 'run'}", "--name", f"a{char}b"], tmp_path, cluster,
                  capsys)
    assert err.startswith("error: --name ") and f"control character {char!r}" in err, err


def test_the_home_and_working_directories_are_checked_too(tmp_path, cluster, capsys, monkeypatch):
    home = tmp_path / "home\nrm -rf x"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    err = refused(["pretrain", *CPU, f"output_dir={tmp_path / 'run'}", "--job-dir", "~/jobs"], tmp_path, cluster,
                  capsys)
    assert err.startswith("error: --job-dir ") and "control character '\\n'" in err, err
    monkeypatch.chdir(home)
    err = refused(["pretrain", *CPU, "output_dir=run"], tmp_path, cluster, capsys)
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
    err = refused([*argv, option, value] if position == "after" else [option, value, *argv], tmp_path, cluster,
                  capsys)
    assert re.search(rf"argument {option}: .*{re.escape(message)}", err), err


def test_sbatch_without_srun_is_a_one_line_error(tmp_path, cluster, capsys, monkeypatch):
    (tmp_path / "bin" / "srun").unlink()
    # only the fake tools: a machine with SLURM installed has a real srun in /usr/bin
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    err = refused(["pretrain", *CPU, f"output_dir={tmp_path / 'run'}"], tmp_path, cluster, capsys)
    assert "srun not found on PATH" in err and "--cluster local" in err, err
