"""The console script: every sub-command has --help, and bad input is one line on stderr (exit 2)."""

from __future__ import annotations

import pytest

from container_ssl.cli import COMMANDS, main, one_line
from container_ssl.errors import UserError


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: container-ssl " + command in capsys.readouterr().out


def test_top_level_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_bad_config_key_is_one_line(capsys):
    assert main(["pretrain", "optim.lr=0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown config key 'optim.lr'")


def test_worker_wrapped_error_keeps_only_the_message():
    wrapped = UserError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File x\ncontainer_ssl.errors.UserError: unreadable image a.jpg: empty file")
    assert one_line(wrapped) == "unreadable image a.jpg: empty file"


def test_overrides_may_follow_options(monkeypatch):
    import container_ssl.ssl.pretrain_cli as pretrain_cli

    seen = {}
    monkeypatch.setattr(pretrain_cli, "pretrain", lambda cfg, **kw: seen.update(cfg=cfg, **kw))
    assert main(["pretrain", "optim.epochs=3", "--no-resume", "seed=5", "optim.warmup_epochs=1",
                 "--output-dir", "x"]) == 0
    cfg = seen["cfg"]
    assert (cfg.optim.epochs, cfg.seed, cfg.output_dir, seen["auto_resume"]) == (3, 5, "x", False)


# ---------------------------------------------------------------- model errors: ValueError in, one line out
def test_model_errors_are_value_errors_for_library_callers():
    """The model code is a library: its refusals are ValueErrors, caught the usual way (as with timm)."""
    import timm
    import torch

    from container_ssl.models import create_backbone

    model = create_backbone("container_mlp_tiny", img_size=32, patch_size=2)
    try:
        model(torch.randn(1, 3, 16, 16))
    except ValueError as e:
        assert "built for a 16x16 feature map" in str(e)
    else:
        pytest.fail("a 16-px input to a model built for 32 px was accepted")
    for build in (lambda: create_backbone("resnet50"), lambda: create_backbone("deit_tiny", img_size=30, patch_size=4),
                  lambda: timm.create_model("container_light_tiny", stem_stride=0),
                  lambda: create_backbone("container_light_tiny", img_size=30)(torch.randn(1, 3, 30, 30))):
        with pytest.raises(ValueError) as e:
            build()
        assert not isinstance(e.value, UserError)


@pytest.mark.parametrize(("argv", "says"), [
    (["models", "--img-size", "30"], "error: input size 30x30 is not divisible by the model's total stride 32"),
    (["pretrain", "model.name=resnet50", "device=cpu"], "error: unknown backbone 'resnet50'; valid names: "),
])
def test_the_same_model_mistake_on_the_command_line_is_one_line(argv, says, tmp_path, capsys):
    if argv[0] == "pretrain":
        argv = [*argv, "--output-dir", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(says), err


def test_any_other_value_error_keeps_its_traceback(monkeypatch):
    """Only the expected errors become one line: a ValueError from elsewhere is a bug and must surface."""
    from container_ssl.models import summary

    def broken(args):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(summary, "run", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["models"])
