"""What every CLI error test checks: exit status 2, one line, no traceback, no results."""

from pathlib import Path


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
