"""The DINO meta-architecture on its own: frozen teacher copy, one step, frozen last layer, skipped step,
EMA, and the checkpoint entries it provides."""

from __future__ import annotations

import torch

from container_ssl.config import load_config
from container_ssl.ssl.dino import DINO, build_models
from container_ssl.ssl.optim import build_optimizer, set_lr_wd

MODEL = ["device=cpu", "model.name=container_light_nano", "model.img_size=32", "model.patch_size=2",
         "model.out_dim=64", "model.hidden_dim=32", "model.bottleneck_dim=16", "aug.global_size=32",
         "aug.local_size=16", "aug.n_local=2", "optim.amp=none"]


def _cfg(*extra: str):
    return load_config(overrides=MODEL + list(extra))


def _views(seed: int = 0, batch: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, s, s, generator=g) for s in (32, 32, 16, 16)]


def _dino(*extra: str) -> tuple[DINO, torch.optim.Optimizer]:
    torch.manual_seed(0)
    dino = DINO(_cfg(*extra), torch.device("cpu"))
    optimizer = build_optimizer("adamw", dino.param_groups())
    set_lr_wd(optimizer, 1e-3, 0.04)
    dino.train()
    return dino, optimizer


def _clone(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_teacher_starts_as_a_frozen_copy_of_the_student():
    torch.manual_seed(0)
    student, teacher = build_models(_cfg("model.norm_last_layer=false"))
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for (n, p), (_, q) in zip(student.named_parameters(), teacher.named_parameters(), strict=True):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), n


def test_step_trains_the_student_with_the_last_layer_frozen_then_the_ema_moves_the_teacher():
    dino, optimizer = _dino("model.norm_last_layer=false")
    student0, teacher0 = _clone(dino.student), _clone(dino.teacher)
    loss, stats, applied = dino.step(_views(), 0.05, optimizer, freeze_last_layer=True)
    assert applied and torch.isfinite(loss) and stats["teacher_temp"] == 0.05
    now = dino.student.state_dict()
    last = [k for k in now if k.startswith("head.last_layer.")]
    assert last and all(torch.equal(now[k], student0[k]) for k in last), "the frozen last layer moved"
    assert any(not torch.equal(now[k], student0[k]) for k in now if k.startswith("backbone.")), "student did not train"
    assert all(torch.equal(p, teacher0[n]) for n, p in dino.teacher.named_parameters()), "teacher moved before the EMA"

    dino.update_teacher(0.9)
    s = dict(dino.student.named_parameters())
    for name, p in dino.teacher.named_parameters():
        torch.testing.assert_close(p, 0.9 * teacher0[name] + 0.1 * s[name].detach(), rtol=1e-6, atol=1e-7)
    assert all(p.grad is None for p in dino.teacher.parameters())  # gradients are off in the teacher throughout

    dino.step(_views(1), 0.05, optimizer, freeze_last_layer=False)
    now = dino.student.state_dict()
    assert any(not torch.equal(now[k], student0[k]) for k in last), "the last layer stays frozen after its epochs"


def test_a_non_finite_loss_updates_nothing_and_undo_puts_the_buffers_back():
    dino, optimizer = _dino()
    dino.step(_views(), 0.04, optimizer)  # a real step first: optimiser state and moved statistics
    before = {"student": _clone(dino.student), "teacher": _clone(dino.teacher), "loss": _clone(dino.loss)}
    views = _views(2)
    views[0][0] = float("nan")
    loss, _, applied = dino.step(views, 0.04, optimizer, undo_on_skip=True)
    assert not applied and not torch.isfinite(loss)
    after = {"student": dino.student.state_dict(), "teacher": dino.teacher.state_dict(), "loss": dino.loss.state_dict()}
    changed = [f"{w}.{k}" for w in before for k in before[w] if not torch.equal(before[w][k], after[w][k])]
    assert not changed, changed  # weights, BatchNorm statistics and the centre as they were


def test_state_dict_holds_the_checkpoint_entries_under_the_plain_model_names():
    dino, _ = _dino()
    torch.manual_seed(0)
    student, teacher = build_models(_cfg())
    state = dino.state_dict()
    assert list(state) == ["student", "teacher", "loss"]
    assert list(state["student"]) == list(student.state_dict()) and list(state["teacher"]) == list(teacher.state_dict())
    assert list(state["loss"]) == ["center"] and state["loss"]["center"].shape == (1, 64)


def test_param_groups_decay_only_the_students_matrices():
    dino, _ = _dino()
    skip = set(getattr(dino.student.backbone, "no_weight_decay", lambda: set())())
    decay, no_decay = ({id(p) for p in g["params"]} for g in dino.param_groups())
    for name, p in dino.student.named_parameters():
        if not p.requires_grad:
            assert id(p) not in decay | no_decay, name
        elif p.ndim >= 2 and not any(name.endswith(k) for k in skip):
            assert id(p) in decay, name
        else:
            assert id(p) in no_decay, name


def test_autocast_on_the_cpu_still_steps():
    dino, optimizer = _dino("optim.amp=bf16")
    assert dino.scaler is None  # a GradScaler only for fp16 on a GPU
    _, _, applied = dino.step(_views(), 0.04, optimizer)
    assert applied
