"""What every command-line module shares: the one-line error, number checks and the last
lines of a training command."""

from __future__ import annotations

import argparse


class CliError(Exception):
    """A bad argument or input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise CliError(message)


def bounded(kind=int, *, minimum=None, above=None, below=None, maximum=None):
    """An argparse type: a finite `kind` number that is >= `minimum` or > `above`, and
    < `below` or <= `maximum`."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be > {above}")
        if below is not None and value >= below:
            raise argparse.ArgumentTypeError(f"must be < {below}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}")
        return value

    return parse


def finish(paths, failures, count: int, folder, console) -> int:
    """The files written and the failures; exit status 0, or CliError naming the failed."""
    console.print("wrote " + ", ".join(str(p) for p in paths))
    for f in failures:
        console.print(f"[red]failed[/]: {f.error}")
    if failures:
        raise CliError(f"{len(failures)} of {count} algorithm(s) failed "
                       f"({', '.join(f.name for f in failures)}); the others' "
                       f"results are in {folder}")
    return 0
