"""benchmarks/affinity_study.py: the schedule fitted to a wall-time budget, the alpha read-out, and the whole
pipeline end to end in its ``--smoke`` mode (two variants, and lightly's peer when lightly is installed)."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from container_ssl.checkpoint import save_atomic
from container_ssl.config import load_config, to_yaml
from container_ssl.models import create_backbone
from container_ssl.ssl.run_log import Progress

REPO = Path(__file__).resolve().parents[2]


def _study():
    spec = importlib.util.spec_from_file_location("affinity_study", REPO / "benchmarks" / "affinity_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["affinity_study"] = module  # --jobs pickles its functions by module name for the workers
    spec.loader.exec_module(module)
    return module


def test_fit_schedule_by_hand():
    fit = _study().fit_schedule
    # 200 img/s x 15 min x 0.9 = 162,000 images = 3 full epochs of 50,000
    assert fit(200.0, 15, 50_000, 64) == (3, 0)
    # 100 img/s x 10 min x 0.9 = 54,000 images: under two epochs, so two epochs of a 27,000-image subset
    assert fit(100.0, 10, 50_000, 64) == (2, 27_000)
    # 1 img/s x 6 s x 0.9 = 5.4 images: never below one batch
    assert fit(1.0, 0.1, 50_000, 64) == (2, 64)
    with pytest.raises(ValueError, match="positive"):
        fit(0.0, 15, 50_000)


def test_mix_alphas_are_the_sigmoid_of_the_teachers_logits(tmp_path):
    logits = {"backbone.stages.0.blocks.0.mixer.mix_logit": 0.3, "backbone.stages.2.blocks.1.mixer.mix_logit": -1.2,
              "backbone.stages.2.blocks.0.mixer.mix_logit": 2.0}
    teacher = {k: torch.tensor([v]) for k, v in logits.items()}
    teacher["backbone.stages.0.blocks.0.mixer.proj.weight"] = torch.zeros(2, 2)
    student = {k: torch.zeros_like(v) for k, v in teacher.items()}  # only the teacher's are reported
    save_atomic({"teacher": teacher, "student": student}, tmp_path / "checkpoint.pt")
    sig = [1 / (1 + math.exp(-v)) for v in (0.3, 2.0, -1.2)]
    alphas = _study().mix_alphas(tmp_path / "checkpoint.pt")
    assert alphas.keys() == {"stage1", "stage3"}
    assert alphas["stage1"] == pytest.approx([sig[0]], abs=1e-4)
    assert alphas["stage3"] == pytest.approx(sig[1:], abs=1e-4)  # blocks in order


def test_progress_line_goes_to_the_stdout_of_the_moment(monkeypatch):
    """The study runs commands in-process with stdout redirected per run; progress must follow the redirect."""
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    Progress(10, 0).line(0, 1, 0, {"loss": 1.0})
    assert "it 1/10" in buf.getvalue()


def _stopped_as_planned(summary: dict, steps: int) -> bool:
    """The smoke's step cap, or earlier by its (12-s) budget on a slow or busy machine."""
    done = summary["iterations_done"]
    return done == steps or (1 <= done < steps and summary["budget_reached"])


def _blocks_per_stage(name: str) -> list[int]:
    model = create_backbone(name, img_size=32, patch_size=2)
    return [len(stage.blocks) for stage in model.stages]


@pytest.mark.slow
def test_smoke_runs_the_whole_pipeline_for_two_variants(cifar10_small, tmp_path):
    study = _study()
    with_peer = importlib.util.find_spec("lightly") is not None
    out = tmp_path / "out"
    jobs = min(2, len(os.sched_getaffinity(0)))  # two variants at once, a core each, where the machine has two
    argv = ["--smoke", "--data", str(cifar10_small), "--models", "container_light_tiny", "container_pam_tiny",
            "--out", str(out), "--jobs", str(jobs)] + ([] if with_peer else ["--no-peer"])
    assert study.main(argv) == 0

    results = json.loads((out / "study.json").read_text())
    assert list(results["variants"]) == ["container_light_tiny", "container_pam_tiny"]
    if jobs == 2:  # each worker was pinned to a core of its own
        cores = [r["plan"]["cpu_cores"] for r in results["variants"].values()]
        assert all(len(c) == 1 for c in cores) and cores[0] != cores[1], cores
        assert results["cpu_cores_per_variant"] == 1 and "2 variants trained at once" in (out / "report.md").read_text()
    for name, r in results["variants"].items():
        s = r["summary.json"]
        assert s["model"] == name and _stopped_as_planned(s, study.SMOKE["steps"])
        assert r["plan"]["epochs"] >= 2 and r["plan"]["calibration_images_per_s"] > 0
        for key in ("eval/knn.json", "eval_random/knn.json"):  # the k the study reports (NaN without it)
            assert 20 in [x["k"] for x in r[key]["results"]] and r[key]["val"]["images"] == study.SMOKE["val"]
        # linear: lr and epoch chosen on held-out train images, val evaluated once; finetune: its best epoch
        linear, finetune = r["eval/linear.json"], r["eval/finetune_0.1.json"]
        assert linear["selection"] == "holdout" and linear["val_evaluations"] == 1, linear
        assert finetune["top1"] == max(h["val_top1"] for h in finetune["history"])
        assert r["gmacs_32px"] > 0
        assert (out / name / "eval" / "knn.json").is_file() and (out / name / "config.yaml").is_file()
    # the fixed-size family trained with its local crops at the global size
    assert "aug.local_size=32" in results["variants"]["container_pam_tiny"]["plan"]["final_overrides"]
    # one alpha per mixed block: stage 4 only for Container-Light, every block for PAM
    light = results["variants"]["container_light_tiny"]["alphas"]
    assert {s: len(a) for s, a in light.items()} == {"stage4": _blocks_per_stage("container_light_tiny")[3]}
    pam = results["variants"]["container_pam_tiny"]["alphas"]
    assert [len(pam[f"stage{i + 1}"]) for i in range(4)] == _blocks_per_stage("container_pam_tiny")
    assert all(0.0 < a < 1.0 for v in pam.values() for a in v)

    report = (out / "report.md").read_text()
    assert "| container_pam_tiny |" in report and "| container_light_tiny |" in report
    assert (out / "knn_vs_gmacs.png").is_file() and (out / "knn_vs_time.png").is_file()
    if with_peer:
        peer = results["peer"]
        ours, theirs = study.top1(peer["ours"]["knn"]), study.top1(peer["lightly"]["knn"])
        assert peer["knn20_diff_points"] == pytest.approx(ours - theirs)
        # equal budgets: the peer's "ours" is the study's own quick-recipe run, not a second training
        assert peer["ours"]["reused_run"] == "container_light_tiny"
        assert ours == study.top1(results["variants"]["container_light_tiny"]["eval/knn.json"])
        assert _stopped_as_planned(peer["lightly"], study.SMOKE["steps"])
        assert peer["lightly"]["knn"]["val"]["images"] == study.SMOKE["val"]
        assert f"{peer['knn20_diff_points']:+.2f} kNN@20 points" in report


def _bare_study(module, tmp_path, jobs=1, minutes=15.0):
    """A Study without its data scan: the attributes overrides() and reusable() read."""
    study = object.__new__(module.Study)
    study.args = argparse.Namespace(jobs=jobs, minutes=minutes, reuse=True)
    study.mode, study.data, study.runs = "cpu", "cifar10", tmp_path
    return study


def test_one_thread_per_variant_trains_in_fp32(tmp_path):
    module = _study()
    deit = module.VARIANTS["deit_tiny"][0]
    assert load_config(REPO / deit).optim.amp == "bf16"  # the shipped DeiT recipe, on all cores
    _, alone = _bare_study(module, tmp_path, jobs=1).overrides("deit_tiny")
    _, pinned = _bare_study(module, tmp_path, jobs=2).overrides("deit_tiny")
    assert "optim.amp=none" not in alone
    assert load_config(REPO / deit, pinned).optim.amp == "none"


def test_reuse_keeps_only_a_finished_run_of_the_same_recipe_and_budget(tmp_path):
    module = _study()
    study = _bare_study(module, tmp_path)
    cfg, overrides = study.overrides("container_attn_tiny")
    run = tmp_path / "container_attn_tiny"

    def write_run(*extra):
        run.mkdir(exist_ok=True)
        final = [*overrides, "optim.epochs=2", "data.subset=9000", "max_minutes=15.0", *extra]
        (run / "config.yaml").write_text(to_yaml(load_config(REPO / cfg, final)))
        for rel in ("checkpoint.pt", *module.RESULT_FILES):
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            (run / rel).write_text("{}")

    write_run()
    plan = study.reusable("container_attn_tiny", run)
    assert plan is not None and plan["reused"] and "data.subset=9000" in plan["final_overrides"]
    assert "data.subset=9000" not in plan["overrides"]  # the overrides before the calibration's fit
    assert load_config(REPO / plan["config"], plan["final_overrides"]).model.name == "container_attn_tiny"
    assert _bare_study(module, tmp_path, minutes=10.0).reusable("container_attn_tiny", run) is None  # budget
    write_run("optim.base_lr=0.002")  # another recipe: retrain
    assert study.reusable("container_attn_tiny", run) is None
    write_run()
    (run / "eval" / "linear.json").unlink()  # unfinished: retrain
    assert study.reusable("container_attn_tiny", run) is None


def test_report_names_paths_beside_the_checkout_as_relative_ones(tmp_path):
    """The report is committed like study.json: the data path under the checkout's parent must not leak."""
    study = _study()
    bare = _bare_study(study, tmp_path)
    data = str(study.ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
    bare.out = tmp_path / "out"
    bare.out.mkdir()
    bare.results = {"variants": {}, "peer": None, "mode": "cpu", "machine": "x86_64 CPU, 2 cores", "data": data,
                    "minutes": 15.0, "jobs": 1, "cpu_cores_per_variant": 2, "command": "python x.py"}
    report = bare.write().read_text()
    assert "Data: ../shared/data/cifar10-jpeg.tar.gz." in report, report
    assert str(study.ROOT.parent) not in report
    assert str(study.ROOT.parent) not in (bare.out / "study.json").read_text()
