"""Drill 4d: a newline in any value that reaches the sbatch script is refused before anything is written.

Why: submitit quotes every value, but writes it on an ``#SBATCH`` comment line; a newline ends the comment
and the rest runs as shell on the cluster. The first row proves it on submitit alone: the header of the
script it renders for a job name holding a newline is run with bash in a sandbox, and the injected command
runs. Then every option, the command's arguments, the output dir from a YAML config, the job dir and the
local executor's path go through a real ``container-ssl submit`` with a fake ``sbatch`` on PATH: one
``error:`` line naming the option, exit status 2, sbatch never called, nothing written.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from submitit.slurm.slurm import _make_sbatch_string

from tests.launch.sbatch_helpers import WHERE, newline_case, refused

from .figures import record, table
from .helpers import short


def _submitit_alone(tmp_path: Path) -> tuple[str, ...]:
    """Run the part of submitit's script before its command (the #SBATCH header) for a job name with a newline."""
    marker = tmp_path / "injected"
    script = _make_sbatch_string(command="true", folder=tmp_path / "jobs",
                                 job_name=f"run\ntouch {marker} #")  # '#' hides submitit's closing quote
    header = script.split("\n# command\n")[0]
    subprocess.run(["bash", "-c", header], check=True, cwd=tmp_path, timeout=30)
    return ("[submitit alone] --name 'run\\ntouch $TMP/injected #'", "script written",
            "injected command ran" if marker.exists() else "nothing ran", "-")


@pytest.mark.reliability
def test_control_characters_never_reach_sbatch(tmp_path, cluster, capsys):
    rows = [_submitit_alone(tmp_path)]
    for i, where in enumerate(WHERE):
        case_dir = tmp_path / f"c{i}"
        case_dir.mkdir()
        argv, option = newline_case(case_dir, where)
        err = refused(argv, tmp_path, cluster, capsys).strip()  # exit 2, one line, sbatch not called, no file
        assert err.startswith(f"error: {option} ") and "control character" in err, err
        line = re.sub(r" '.*?(?:'|\.\.\.): control character", " <value>: control character", err)
        rows.append((where, "exit 2: " + short(line, 75), "not called", "0"))
    record("drill 4d: control characters into the sbatch script",
           table(("value with a control character in", "outcome", "sbatch", "files written"), rows))
