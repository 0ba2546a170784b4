"""`container-ssl submit` without a cluster: argument splitting, validation errors, dry-run rendering."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from container_ssl.cli import main
from container_ssl.errors import UserError
from container_ssl.launch import submit
from container_ssl.launch.jobs import command_parser
from container_ssl.launch.submit import plan_from_argv, render, sbatch_script

# a CPU config that loads instantly; nothing is trained in this file
CPU = ["device=cpu", "model.name=container_light_nano", "data.num_workers=0"]


@pytest.fixture(autouse=True)
def _partitions(monkeypatch):
    """A fake cluster with partitions 'gpu' (default) and 'debug', whatever this machine has."""
    monkeypatch.setattr(submit, "slurm_partitions", lambda: [("gpu", True), ("debug", False)])


def _sbatch_lines(text: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([a-z-]+)(?:=(.*))?$", text, flags=re.MULTILINE))


def test_dry_run_renders_the_sbatch_script(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["submit", "pretrain", "device=cuda", f"output_dir={out}", "--nodes", "2", "--gpus-per-node", "8",
                 "--partition", "gpu", "--timeout-min", "4320", "--account", "vision", "--slurm-extra",
                 "mail-type=END", "--slurm-extra", "exclusive=", "--dry-run"])
    text = capsys.readouterr().out
    assert code == 0
    lines = _sbatch_lines(text)
    assert lines["nodes"] == "2" and lines["gpus-per-node"] == "8" and lines["ntasks-per-node"] == "8"
    assert lines["time"] == "4320" and lines["signal"] == "USR2@120" and lines["partition"] == "gpu"
    assert lines["account"] == "vision" and lines["mail-type"] == "END" and lines["exclusive"] == ""
    assert lines["output"] == f"{out}/submitit/%j_0_log.out"
    assert "srun --unbuffered" in text and "-m submitit.core._submit" in text
    assert f"output_dir={out}" in text  # the command line that will run
    assert not out.exists(), "a dry run must not create the output dir"


def test_options_may_come_before_or_after_the_command(tmp_path):
    p = plan_from_argv(["--nodes", "3", "--dry-run", "pretrain", *CPU, f"output_dir={tmp_path}", "--tasks-per-node",
                        "2", "--nodes", "4", "--timeout-min", "30", "--signal-delay-s", "300"])
    assert (p.nodes, p.tasks_per_node, p.gpus_per_node, p.world_size) == (4, 2, 0, 8)
    assert p.argv == [*CPU, f"output_dir={tmp_path}"] and p.dry_run
    assert p.cpus_per_task == 1  # data.num_workers + 1
    assert p.job.config["output_dir"] == str(tmp_path) and p.job.config["device"] == "cpu"
    params = p.parameters()
    assert "gpus_per_node" not in params  # never '--gpus-per-node=0': clusters without gres reject it
    assert params["time"] == 30 and params["signal_delay_s"] == 300
    assert _sbatch_lines(sbatch_script(p))["signal"] == "USR2@300"


def test_defaults_follow_the_command(tmp_path):
    gpu = plan_from_argv(["pretrain", "device=auto", f"output_dir={tmp_path}", "--dry-run"])
    assert (gpu.gpus_per_node, gpu.tasks_per_node, gpu.timeout_min, gpu.signal_delay_s) == (1, 1, 4320, 120)
    assert gpu.cpus_per_task == 3  # default data.num_workers=2, plus the main process
    assert gpu.job_dir == tmp_path / "submitit" and gpu.partition is None  # the cluster's default partition
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"x")
    knn = plan_from_argv(["knn", "--checkpoint", str(ckpt), "--device", "cpu", "--dry-run"])
    workers = command_parser("knn").parse_args(["--checkpoint", str(ckpt)]).num_workers
    assert (knn.nodes, knn.tasks_per_node, knn.gpus_per_node, knn.cpus_per_task) == (1, 1, 0, workers + 1)
    assert knn.output_dir == tmp_path / "eval" and knn.job.config is None
    assert knn.job.argv == ["--checkpoint", str(ckpt), "--device", "cpu"]


@pytest.mark.parametrize("argv, message", [
    (["--gpus-per-node", "2"], r"--gpus-per-node 2 but the config runs on the CPU \(device=cpu\)"),
    (["device=cuda", "--gpus-per-node", "8", "--tasks-per-node", "4"],
     r"--tasks-per-node 4 does not match --gpus-per-node 8"),
    (["device=cuda", "--gpus-per-node", "0"], r"needs a GPU \(device=cuda\) but --gpus-per-node is 0"),
    (["--nodes", "0"], r"submit: argument --nodes: must be at least 1"),
    (["--partition", "nope"], r"--partition nope: no such partition on this cluster; available: gpu, debug"),
    (["--timeout-min", "2", "--signal-delay-s", "120"], r"--signal-delay-s 120 is not shorter than the time limit"),
    (["--slurm-extra", "time=10"], r"--slurm-extra time=10: time is set by container-ssl submit; use --timeout-min"),
    (["--slurm-extra", "oops"], r"--slurm-extra oops: expected KEY=VALUE"),
    (["optim.lr=0.1"], r"unknown config key 'optim.lr'"),
    (["--cluster", "local", "--nodes", "2"], r"--cluster local runs on this machine only"),
    (["--no-such-flag"], r"pretrain arguments: unrecognized arguments: --no-such-flag"),
])
def test_bad_input_is_a_one_line_error_before_submission(tmp_path, capsys, argv, message):
    code = main(["submit", "pretrain", *CPU, f"output_dir={tmp_path / 'run'}", *argv, "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err


def test_partition_required_without_a_default(tmp_path, monkeypatch):
    monkeypatch.setattr(submit, "slurm_partitions", lambda: [("a100", False), ("v100", False)])
    with pytest.raises(UserError, match=r"no default partition: pass --partition \(one of a100, v100\)"):
        plan_from_argv(["pretrain", *CPU, f"output_dir={tmp_path}", "--dry-run"])
    assert plan_from_argv(["pretrain", *CPU, f"output_dir={tmp_path}", "--partition", "v100",
                           "--dry-run"]).partition == "v100"


def test_unwritable_output_and_job_dirs(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=r"output dir .*file/run cannot be created: .*file is not a folder"):
        plan_from_argv(["pretrain", *CPU, f"output_dir={blocker / 'run'}", "--dry-run"])
    with pytest.raises(UserError, match=r"--job-dir .*file/logs cannot be created"):
        plan_from_argv(["pretrain", *CPU, f"output_dir={tmp_path / 'run'}", "--job-dir", str(blocker / "logs"),
                        "--dry-run"])


def test_eval_commands_run_as_one_process(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"x")
    with pytest.raises(UserError, match=r"knn runs as one process: use --nodes 1 --tasks-per-node 1"):
        plan_from_argv(["knn", "--checkpoint", str(ckpt), "--tasks-per-node", "2", "--dry-run"])
    with pytest.raises(UserError, match=r"linear uses one GPU"):
        plan_from_argv(["linear", "--checkpoint", str(ckpt), "--gpus-per-node", "2", "--dry-run"])
    with pytest.raises(UserError, match=r"--gpus-per-node 1 but knn \(--device cpu\) runs on the CPU"):
        plan_from_argv(["knn", "--checkpoint", str(ckpt), "--device", "cpu", "--gpus-per-node", "1", "--dry-run"])
    with pytest.raises(UserError, match=r"--checkpoint .*missing.pt: no such file"):
        plan_from_argv(["knn", "--checkpoint", str(tmp_path / "missing.pt"), "--dry-run"])
    with pytest.raises(UserError, match=r"knn arguments: .*--k: .*"):
        plan_from_argv(["knn", "--checkpoint", str(ckpt), "--k", "zero", "--dry-run"])


def test_submitting_without_sbatch_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(submit.shutil, "which", lambda name: None)
    monkeypatch.setattr(submit, "slurm_partitions", lambda: None)
    with pytest.raises(UserError, match=r"sbatch not found on PATH: .* or use --cluster local"):
        plan_from_argv(["pretrain", *CPU, f"output_dir={tmp_path}"])
    assert plan_from_argv(["pretrain", *CPU, f"output_dir={tmp_path}", "--cluster", "auto"]).cluster == "local"


def test_existing_checkpoint_and_short_time_limit_are_noted(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    p = plan_from_argv(["pretrain", *CPU, f"output_dir={tmp_path}", "--timeout-min", "5", "--signal-delay-s",
                        "60", "--dry-run"])
    text = render(p)
    assert "checkpoint.pt exists: the job continues from it" in text
    assert "--timeout-min 5 < 10: submitit counts every USR2" in text
    with pytest.raises(UserError, match=r"--resume .*nothing.pt: no such checkpoint file"):
        plan_from_argv(["pretrain", *CPU, f"output_dir={tmp_path}", "--resume", str(tmp_path / "nothing.pt"),
                        "--dry-run"])


def test_local_dry_run_and_help(tmp_path, capsys):
    assert main(["submit", "pretrain", *CPU, f"output_dir={tmp_path}", "--cluster", "local", "--tasks-per-node",
                 "2", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "cluster: local" in text and "LocalExecutor: 2 process(es)" in text and "#SBATCH" not in text
    assert main(["submit", "knn", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--signal-delay-s" in text and "--temperature" in text  # submit's options and knn's own


def test_config_file_is_resolved_at_submission(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("device: cpu\noptim:\n  epochs: 7\n  warmup_epochs: 1\n")
    p = plan_from_argv(["pretrain", "--config", str(cfg), "optim.epochs=9", "--output-dir", "rel/out", "--dry-run"])
    assert p.job.config["optim"]["epochs"] == 9
    assert Path(p.job.config["output_dir"]).is_absolute() and p.job.config["output_dir"].endswith("rel/out")
    assert p.job.resume is None and p.job.auto_resume
