"""What every CLI error test checks: exit status 2, one line, no traceback, no results."""

from pathlib import Path

# The tiny CLI problem: equal programs compile once per test session.
TINY = ["--nodes", "3", "--max-node-size", "60", "--rounds", "2", "--hidden", "4"]


def assert_one_line_error(status: int, capsys, match: str, folder: Path) -> None:
    """A CLI run that returned `status` printed exactly one error line containing `match`,
    no traceback, and left no results.json in `folder`."""
    assert status == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedmtl: error:"), err
    assert match in lines[0]
    assert "Traceback" not in out + err
    assert not (folder / "results.json").exists()


def assert_stops_before_training(options: list, match: str, kind: str, capsys, tmp_path,
                                 monkeypatch) -> None:
    """`fedmtl compare --algorithms fedavg` on the tiny CLI problem with `options` stops in
    one error line containing `match`, without training (a bad `kind` option)."""
    from fedmtl import cli

    def no_training(*args, **kwargs):
        raise AssertionError(f"trained despite a bad {kind} option")

    monkeypatch.setattr(cli, "compare", no_training)
    argv = ["compare", "--algorithms", "fedavg", *TINY, *options, "--out", str(tmp_path)]
    assert_one_line_error(cli.main(argv), capsys, match, tmp_path)
