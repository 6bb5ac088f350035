"""The research tooling from the command line: --eval-every curves, --config files,
config.toml and `fedmtl rerun`, --checkpoint-every and --resume, --quiet and --json-lines,
--tensorboard."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmtl import cli, cli_tooling, configs

# The tiny problem of test_report_cli.py: equal programs compile once per test session.
TINY = ["--nodes", "3", "--max-node-size", "60", "--rounds", "2", "--hidden", "4"]


def _files(folder: Path) -> dict[str, str]:
    return {name: (folder / name).read_text() for name in ("results.json", "per_node.csv")}


def test_curves_config_and_rerun_reproduce_a_folder(tmp_path, capsys):
    first = tmp_path / "first"
    assert cli.main(["compare", *TINY, "--eval-every", "1", "--out", str(first)]) == 0
    lines = [json.loads(line) for line in (first / "curves.jsonl").read_text().splitlines()]
    assert [(r["algorithm"], r["round"]) for r in lines] == [
        (a, r) for a in ("local", "fedavg", "fedper") for r in (1, 2)]
    point = lines[2]["test"]["personalized"]["accuracy"]  # fedavg after round 1
    assert 0 <= point["mean"] <= 1 and point["nodes"] == 3 and point["se"] >= 0
    recorded = configs.read(first / "config.toml")
    assert recorded["command"] == "compare" and recorded["eval_every"] == 1
    assert recorded["lr"] == 0.05  # resolved, not left to a default that may change
    assert "out" not in recorded and "show_nodes" not in recorded
    capsys.readouterr()
    assert cli.main(["rerun", str(first), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert "reproduced" in capsys.readouterr().out
    assert _files(first) == _files(tmp_path / "again")
    # a changed result is caught
    changed = tmp_path / "changed"
    shutil.copytree(first, changed)
    doc = json.loads((changed / "results.json").read_text())
    doc["algorithms"]["fedper"]["history"]["train_loss"][0] += 1e-7
    (changed / "results.json").write_text(json.dumps(doc))
    assert cli_tooling.differences(first, changed) == ["results.json: algorithm fedper"]


def test_a_config_file_sets_options_and_the_command_line_wins(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('rounds = 7\nmax-node-size = 60\nhidden = [4, 3]\nalgorithms = "fedavg"\n'
                    'secure_aggregation = false\nparam = ["fedavg.server_lr=0.5"]\n')
    parser = cli.make_parser()
    argv = ["compare", "--config", str(path), "--rounds", "2"]
    args = cli.with_config(parser, parser.parse_args(argv), argv)
    assert (args.rounds, args.max_node_size, args.hidden) == (2, 60, [4, 3])
    assert args.algorithms == "fedavg" and args.param == ["fedavg.server_lr=0.5"]


@pytest.mark.parametrize("text, match", [
    ("roundz = 3\n", "'roundz' is not an option of 'fedmtl compare'; did you mean rounds"),
    ("rounds = [1, 2]\n", "rounds takes one value"),
    ("rounds = \n", "is not valid TOML"),
    ('command = "run"\n', "a config of `fedmtl run`, not of `fedmtl compare`"),
    ("rounds = -1\n", "rounds: must be >= 0"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert cli.main(["compare", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def test_resume_refuses_other_options_and_folders_without_a_config(tmp_path, capsys):
    assert cli.main(["compare", "--resume", str(tmp_path), "--rounds", "3"]) == 2
    assert "leave out --rounds" in capsys.readouterr().err
    assert cli.main(["compare", "--resume", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "leave out --out" in capsys.readouterr().err
    assert cli.main(["compare", "--resume", str(tmp_path)]) == 2
    assert "holds no config.toml" in capsys.readouterr().err
    assert cli.main(["rerun", str(tmp_path / "none")]) == 2


def test_a_run_without_checkpoints_is_not_resumed_and_keeps_its_results(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["compare", *TINY, "--algorithms", "local", "--quiet", "--out",
                     str(out)]) == 0
    before = _files(out)
    assert cli.main(["compare", "--resume", str(out)]) == 2
    assert "holds no checkpoints/" in capsys.readouterr().err
    assert _files(out) == before  # refused before the folder was touched


def test_a_fresh_run_removes_only_its_own_earlier_files(tmp_path):
    out = tmp_path / "r"
    (out / "plots").mkdir(parents=True)
    (out / "checkpoints" / "mine").mkdir(parents=True)
    for name in ("plots/notes.txt", "plots/curves_accuracy.png", "checkpoints/mine/w.npy"):
        (out / name).write_text("x")
    assert cli.main(["compare", *TINY, "--algorithms", "local", "--quiet", "--out",
                     str(out)]) == 0
    assert (out / "plots" / "notes.txt").exists() and (out / "checkpoints/mine/w.npy").exists()
    assert not (out / "plots" / "curves_accuracy.png").exists()  # an earlier run's figure


def test_negative_values_survive_the_config_file(tmp_path):
    parser = cli.make_parser()
    argv = ["compare", "--attack-scale=-1e-05"]
    args = parser.parse_args(argv)
    words = configs.to_argv({"attack_scale": args.attack_scale}, cli_tooling._command_parser(
        parser, "compare"), "test")
    assert parser.parse_args(["compare", *words]).attack_scale == -1e-05


def test_an_interrupted_run_resumes_to_the_uninterrupted_results(tmp_path, monkeypatch):
    options = [*TINY, "--rounds", "3", "--eval-every", "2", "--checkpoint-every", "2",
               "--algorithms", "fedavg", "--quiet"]
    whole = tmp_path / "whole"
    assert cli.main(["compare", *options, "--out", str(whole)]) == 0
    assert sorted(p.name for p in (whole / "checkpoints" / "fedavg").iterdir()) == ["2", "3"]
    real = cli.compare

    def killed_in_second(algorithms, data, fed, callback, **hooks):
        def callback_then_kill(name, round_done, metrics):
            callback(name, round_done, metrics)
            if name == "fedavg" and round_done == 2:
                raise KeyboardInterrupt
        return real(algorithms, data, fed, callback_then_kill, **hooks)

    killed = tmp_path / "killed"
    monkeypatch.setattr(cli, "compare", killed_in_second)
    assert cli.main(["compare", *options, "--out", str(killed)]) == 130
    assert json.loads((killed / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(cli, "compare", real)
    assert cli.main(["compare", "--resume", str(killed), "--quiet"]) == 0
    assert _files(killed) == _files(whole)
    assert (killed / "curves.jsonl").read_text() == (whole / "curves.jsonl").read_text()
    run = json.loads((killed / "run.json").read_text())
    assert run["status"] == "complete" and run["resumed"] is True


def test_quiet_prints_nothing_and_json_lines_only_json(tmp_path, capsys):
    assert cli.main(["compare", *TINY, "--quiet", "--out", str(tmp_path / "q")]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert cli.main(["compare", *TINY, "--json-lines", "--eval-every", "2",
                     "--out", str(tmp_path / "j")]) == 0
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in events if e["algorithm"] == "fedavg"] == [
        "start", "round", "round", "done"]
    last = [e for e in events if e["event"] == "round" and e["algorithm"] == "fedavg"][-1]
    assert last["round"] == 2 and set(last["accuracy"]) == {"global", "personalized"}
    assert "summary" in err  # the report went to stderr


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "r"
    assert cli.main(["compare", *TINY, "--eval-every", "1", "--tensorboard", "--quiet",
                     "--out", str(out)]) == 0
    for name in ("local", "fedavg", "fedper"):
        assert list((out / "tensorboard" / name).glob("events.out.tfevents.*")), name


@pytest.mark.slow
def test_a_killed_process_resumes_to_the_uninterrupted_results(tmp_path):
    """Kill -9 a real `fedmtl compare` once its first checkpoint is on disk, resume it."""
    options = ["--nodes", "4", "--max-node-size", "60", "--hidden", "4", "--rounds", "8",
               "--eval-every", "2", "--checkpoint-every", "2", "--algorithms", "fedavg,mocha",
               "--quiet"]
    command = [sys.executable, "-m", "fedmtl"]
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([*command, "compare", *options, "--out", str(whole)], check=True, env=env,
                   timeout=600)
    process = subprocess.Popen([*command, "compare", *options, "--out", str(killed)], env=env)
    mark = killed / "checkpoints" / "mocha" / "2"
    deadline = time.monotonic() + 600
    while not mark.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert json.loads((killed / "run.json").read_text())["status"] == "in progress"
    subprocess.run([*command, "compare", "--resume", str(killed), "--quiet"], check=True,
                   env=env, timeout=600)
    assert _files(killed) == _files(whole)
    assert (killed / "curves.jsonl").read_text() == (whole / "curves.jsonl").read_text()
