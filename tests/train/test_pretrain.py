"""Pretraining loop: exact resume, frozen last layer, a short real run, config and checkpoint errors."""

from __future__ import annotations

import json

import pytest
import torch

from container_ssl.checkpoint import load_checkpoint
from container_ssl.config import load_config
from container_ssl.errors import UserError
from container_ssl.ssl.trainer import DinoTrainer, pretrain
from tests.tiny import REFERENCE, tiny_cfg


def _same_weights(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_resume_mid_epoch_gives_identical_weights(cifar10_small, tmp_path, reference_run):
    common, straight = REFERENCE, reference_run  # 4 iterations per epoch, 8 in all

    split = tmp_path / "split"
    pretrain(tiny_cfg(cifar10_small, split, *common, "max_steps=3"))  # stops inside epoch 0
    mid = load_checkpoint(split / "checkpoint.pt")
    assert (mid["epoch"], mid["batch_in_epoch"]) == (0, 3)
    # resume with data-loader workers: augmentation is seeded per sample, so workers change nothing
    pretrain(tiny_cfg(cifar10_small, split, *common, "data.num_workers=2"))

    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(split / "checkpoint.pt")
    assert a["iteration"] == b["iteration"] == 8
    for key in ("student", "teacher"):
        assert not _same_weights(a[key], b[key]), f"{key} differs after resume"
    assert torch.equal(a["loss"]["center"], b["loss"]["center"])
    # metrics neither lose nor repeat steps
    iters = [json.loads(line)["iteration"] for line in (split / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "train"]
    assert iters == list(range(8))


def test_last_layer_frozen_in_first_epoch(cifar10_small, tmp_path):
    cfg = tiny_cfg(cifar10_small, tmp_path / "run", "data.subset=32", "optim.epochs=2", "optim.freeze_last_layer=1",
                   "model.norm_last_layer=false", "optim.warmup_epochs=0")
    trainer = DinoTrainer(cfg)
    last = {k: v.clone() for k, v in trainer.dino.student.head.named_parameters() if "last_layer" in k}
    other = {k: v.clone() for k, v in trainer.dino.student.head.named_parameters() if "last_layer" not in k}
    assert last
    trainer.train(lambda: True)  # one step, in epoch 0
    now = dict(trainer.dino.student.head.named_parameters())
    assert all(torch.equal(now[k], v) for k, v in last.items()), "last layer moved in the frozen epoch"
    assert any(not torch.equal(now[k], v) for k, v in other.items()), "the rest of the head did not train"


@pytest.mark.slow  # 48 steps: the longest single run of the training tests
def test_short_real_run_learns_without_collapse(cifar10_small, tmp_path):
    out = tmp_path / "run"
    summary = pretrain(tiny_cfg(cifar10_small, out, "optim.epochs=6", "optim.warmup_epochs=1",
                                "optim.batch_size_per_gpu=32", "data.subset=256"))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["type"] == "train"]
    first, last = sum(r["loss"] for r in train[:4]) / 4, sum(r["loss"] for r in train[-4:]) / 4
    assert last < first - 0.1, f"loss did not go down: {first:.3f} -> {last:.3f}"
    # collapse: teacher outputs become one-hot (entropy -> 0) or uniform (KL to uniform -> 0)
    assert train[-1]["teacher_entropy"] > 0.5
    assert train[-1]["teacher_kl_uniform"] > 0.05
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 6 and summary["finished"]
    assert (out / "config.yaml").is_file() and (out / "checkpoint_0006.pt").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(UserError, match="unknown config key 'optim.lr'.*base_lr"):
        load_config(overrides=["optim.lr=0.1"])
    with pytest.raises(UserError, match="optim.epochs"):
        load_config(overrides=["optim.epochs=ten"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  nmae: deit_tiny\n")
    with pytest.raises(UserError, match=f"model.nmae.*{bad.name}"):
        load_config(bad)


def test_resume_with_a_different_config_is_refused(cifar10_small, tmp_path):
    out = tmp_path / "run"
    common = ["data.subset=32", "optim.epochs=1", "max_steps=1"]
    pretrain(tiny_cfg(cifar10_small, out, *common))
    # loading, monitoring and stopping keys may change; the trajectory's keys may not
    DinoTrainer(tiny_cfg(cifar10_small, out, *common[:2], "max_steps=2", "data.num_workers=1"))
    with pytest.raises(UserError) as e:
        DinoTrainer(tiny_cfg(cifar10_small, out, *common, "optim.batch_size_per_gpu=8", "loss.teacher_temp=0.05"))
    msg = str(e.value)
    assert "\n" not in msg and str(out / "checkpoint.pt") in msg
    assert "loss.teacher_temp: 0.07 -> 0.05 and 1 more key(s)" in msg and "--no-resume" in msg
    DinoTrainer(tiny_cfg(cifar10_small, out, *common, "optim.batch_size_per_gpu=8"), auto_resume=False)


def test_changed_keys_flattens_and_ignores_free_keys():
    from container_ssl.config import changed_keys

    saved = {"a": 1, "b": {"c": 2, "d": 3}, "monitor": {"k": 1}, "output_dir": "x"}
    now = {"a": 1, "b": {"c": 5, "e": 4}, "monitor": {"k": 2}, "output_dir": "y"}
    assert changed_keys(saved, now) == [("b.c", 2, 5), ("b.d", 3, None), ("b.e", None, 4)]


def test_cpu_thread_tip_only_when_workers_share_cpu_cores_with_spinning_threads():
    from container_ssl.ssl.loader import cpu_thread_tip

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    tip = cpu_thread_tip(cpu, "cpu", 1, {})
    assert "OMP_WAIT_POLICY=PASSIVE" in tip and "aug.backend=gpu" in tip
    assert cpu_thread_tip(cpu, "cpu", 0, {}) is None  # no workers: nothing competes with the training threads
    assert cpu_thread_tip(cpu, "gpu", 1, {}) is None  # batched augmentation: the workers only decode
    assert cpu_thread_tip(cpu, "cpu", 2, {"OMP_WAIT_POLICY": "ACTIVE"}) is None  # the user chose
    assert cpu_thread_tip(cuda, "cpu", 4, {}) is None


def test_resume_on_other_training_data_is_refused_unless_allowed(cifar10_small, tmp_path, caplog):
    import shutil

    out, common = tmp_path / "run", ["optim.epochs=1", "max_steps=1"]
    pretrain(tiny_cfg(cifar10_small, out, *common))
    n = sum(1 for _ in (cifar10_small / "train").rglob("*.jpg"))

    moved = tmp_path / "moved"  # the same files somewhere else: data.path may change
    shutil.copytree(cifar10_small, moved)
    DinoTrainer(tiny_cfg(moved, out, *common))

    fewer = tmp_path / "fewer"
    shutil.copytree(cifar10_small, fewer)
    next((fewer / "train" / "cat").iterdir()).unlink()
    with pytest.raises(UserError) as e:
        DinoTrainer(tiny_cfg(fewer, out, *common))
    msg = str(e.value)
    assert f"{n} images then, {n - 1} now" in msg and "--allow-data-change" in msg and "\n" not in msg, msg

    renamed = tmp_path / "renamed"  # same count, another file list
    shutil.copytree(cifar10_small, renamed)
    first = min((renamed / "train" / "dog").iterdir())
    first.rename(first.with_name("zz_" + first.name))
    with pytest.raises(UserError, match=f"{n} images both times, but a different file list"):
        DinoTrainer(tiny_cfg(renamed, out, *common))

    with caplog.at_level("WARNING"):
        trainer = DinoTrainer(tiny_cfg(fewer, out, *common), allow_data_change=True)
    assert trainer.start_iteration == 1 and "--allow-data-change" in caplog.text

    # a checkpoint of an older version has no fingerprint: it still resumes, with a warning
    ckpt = load_checkpoint(out / "checkpoint.pt")
    del ckpt["data"]
    torch.save(ckpt, out / "checkpoint.pt")
    caplog.clear()
    with caplog.at_level("WARNING"):
        trainer = DinoTrainer(tiny_cfg(fewer, out, *common))
    assert trainer.start_iteration == 1 and "no training-set fingerprint" in caplog.text


def test_output_dir_inside_the_data_folder_is_refused(cifar10_small, tmp_path):
    import shutil

    data = tmp_path / "data"  # a copy: the code under test must not get a chance to write into the shared set
    shutil.copytree(cifar10_small, data)
    for inside in (data / "runs" / "a", data / "train" / "cat", data):
        with pytest.raises(UserError, match="is inside the data folder"):
            DinoTrainer(tiny_cfg(data, inside, "data.subset=32"))
    assert not (data / "runs").exists() and not (data / "config.yaml").exists()
    DinoTrainer(tiny_cfg(data, tmp_path / "beside", "data.subset=32"))  # a sibling folder is fine


def test_non_finite_weights_are_never_saved(cifar10_small, tmp_path):
    from container_ssl.ssl.health import LearnedNothing

    trainer = DinoTrainer(tiny_cfg(cifar10_small, tmp_path, "data.subset=32", "optim.epochs=1"))
    trainer.save(0, 1)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    name, param = next(iter(trainer.dino.teacher.named_parameters()))
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    with pytest.raises(LearnedNothing, match=rf"1 weight tensor\(s\) became non-finite .*teacher\.{name}.*not saved"):
        trainer.save(0, 2)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
