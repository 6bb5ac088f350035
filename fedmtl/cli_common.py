"""What every command-line module shares: the one-line error and number checks."""

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
