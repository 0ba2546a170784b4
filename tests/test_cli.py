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
