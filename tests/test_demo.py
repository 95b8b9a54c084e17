"""The demo's backbone choice (ImageNet when it can be, random frozen offline), its command lines and closing
lines (tools/demo.py), run in-process with the training scripts and the download replaced: nothing downloads."""

from __future__ import annotations

import json
import shlex
import socket
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import pytest

from common.errors import UserError
from models import DistillationIQA as network  # noqa: N813
from tools import demo


def fake_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, get_state_dict) -> Path:
    """torchvision's cache in tmp_path (empty) and a download that calls `get_state_dict`; the cache path."""
    monkeypatch.setattr(network.torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    url = network.ResNet50_Weights.IMAGENET1K_V1.url
    monkeypatch.setattr(network, "ResNet50_Weights",
                        SimpleNamespace(IMAGENET1K_V1=SimpleNamespace(url=url, get_state_dict=get_state_dict)))
    return network.imagenet_weights_cache_path()


def test_offline_falls_back_to_random_backbone(monkeypatch, tmp_path):
    timeouts = []

    def offline(progress: bool) -> dict:
        timeouts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("Temporary failure in name resolution")

    before = socket.getdefaulttimeout()
    cache = fake_weights(monkeypatch, tmp_path, offline)
    pretrained, source = demo.choose_backbone(timeout_s=7)
    assert pretrained == "false" and timeouts == [7] and socket.getdefaulttimeout() == before
    assert source.startswith("random (frozen") and "downloading them failed (URLError" in source
    # the training scripts' --pretrained true says the same, with what to do
    with pytest.raises(UserError, match=r"not in torchvision's cache .*downloading them failed.*--pretrained false"):
        network.load_backbone_weights(network.ResNet50Backbone(), True)
    assert timeouts == [7, 30] and not cache.exists()


def test_online_downloads_and_cache_is_used(monkeypatch, tmp_path):
    cache = fake_weights(monkeypatch, tmp_path, lambda progress: {})
    assert demo.choose_backbone() == ("true", "imagenet (downloaded)")
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"")
    fake_weights(monkeypatch, tmp_path, lambda progress: pytest.fail("downloaded with the weights in the cache"))
    assert demo.choose_backbone() == ("true", "imagenet (torchvision's cache)")


def test_repeated_options_and_command_line():
    assert demo.repeated_options(["--a", "1", "--b", "", "--a", "2", "--c"]) == ["--a"]
    assert demo.repeated_options(["--a", "1", "--b", "-1"]) == []
    assert demo.command_line("x.py", ["--test_datasets", "", "--lq", "a b.png"]) == \
        "python x.py --test_datasets '' --lq 'a b.png'"
    with pytest.raises(ValueError, match="repeats"):  # before anything runs
        demo.run_step("t", "nothing.py", ["--seed", "0", "--seed", "1"], Path("."))


@pytest.fixture
def demo_run(monkeypatch, tmp_path, capsys):
    """demo.main offline with every step replaced by a recorder; (commands, results.json, printed lines)."""
    commands = []

    def run_step(title, script, args, log_dir, log_name=None):
        assert not demo.repeated_options(args), (script, args)
        commands.append(demo.command_line(script, args))
        if script == "test_DistillationIQA.py":
            folder = Path(args[args.index("--checkpoint_dir") + 1]) / "results"
            folder.mkdir(parents=True)
            m = {"tid2013": {"srcc": 0.1, "plcc": 0.2, "krcc": 0.3}}
            (folder / "test_results.json").write_text(json.dumps({"teacher": m, "student": m}))
        return 1.0

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "run_step", run_step)
    monkeypatch.setattr(demo, "build_data", lambda data, seed: demo_backbone)
    monkeypatch.setattr(demo, "write_student_init", lambda teacher, path: path)
    monkeypatch.setattr(demo, "synthetic_examples", lambda data, out: [str(out / "synthetic_examples" / "jpeg")])
    monkeypatch.setattr(demo, "training_curves", lambda folders, out: None)
    demo_backbone = ("false", "random (frozen, BN eval mode): no ImageNet weights ...")
    out = tmp_path / "demo_output"
    demo.main(["--out", str(out), "--data", str(tmp_path / "demo_data"), "--amp", "off"])
    return commands, json.loads((out / "results.json").read_text()), capsys.readouterr().out.splitlines()


def test_demo_commands_say_each_option_once_and_offline_closing_lines(demo_run, tmp_path):
    commands, results, lines = demo_run
    assert len(commands) == 6
    for command in commands:
        words = shlex.split(command)
        assert demo.repeated_options(words) == []
        if "--test_datasets" in words:
            assert words[words.index("--test_datasets") + 1] == ("" if "train_" in command else "tid2013")
    assert results["settings"]["backbone_source"].startswith("random (frozen")
    assert lines[-1] == demo.RANDOM_BACKBONE_NOTE  # the last line: what an offline run shows and cannot show
    assert "needs ImageNet features" in lines[-1] and "teacher learning" in lines[-1]
    single = demo.single_image_command(tmp_path / "demo_output", tmp_path / "demo_data")
    assert single in (line.strip() for line in lines)
    assert str(tmp_path / "demo_output" / "student" / "models" / "last.pth") in single
