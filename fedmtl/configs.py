"""Run configuration files (TOML): every command-line option of a command can be set in one,
and a results folder holds the file of its run with every value resolved (`config.toml`), so
`fedmtl rerun` and `fedmtl compare --resume` rebuild the run from it.

A file sets options by their long names (`max-node-size = 200` or `max_node_size = 200`);
`command = "compare"` names the command. Options given on the command line override the file.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import math
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG = "config.toml"
# Options that say how a run is shown or where it goes, not what it computes: a results
# folder's config.toml leaves them out, and they may accompany --resume.
PRESENTATION = ("out", "config", "resume", "quiet", "json_lines", "plots", "tensorboard",
                "show_nodes")


class ConfigError(ValueError):
    """A configuration file that cannot be read or sets an option the command lacks."""


def read(path: Path) -> dict:
    """The options a TOML file sets: {dest name: value} (dashes read as underscores), with
    "command" when it names one."""
    path = Path(path)
    try:
        found = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    for key, value in found.items():
        if isinstance(value, dict):
            raise ConfigError(f"config file {path}: [{key}] tables are not options; set "
                              "options at the top level (e.g. rounds = 50)")
    return {key.replace("-", "_"): value for key, value in found.items()}


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """A command's options by dest name (help and positionals left out)."""
    return {a.dest: a for a in parser._actions
            if a.option_strings and a.dest != "help"}


def to_argv(options: dict, parser: argparse.ArgumentParser, source: str) -> list[str]:
    """Command-line words that set `options` ({dest: value}) on `parser`'s command.

    Raises:
      ConfigError: naming `source` and the option the command does not have, or a value of
        the wrong form.
    """
    actions = _options(parser)
    words: list[str] = []
    for dest, value in options.items():
        if dest == "command":
            continue
        action = actions.get(dest)
        if action is None:
            names = sorted(k.replace("_", "-") for k in actions)
            close = difflib.get_close_matches(dest.replace("_", "-"), names, n=3)
            hint = (f"; did you mean {' or '.join(close)}?" if close
                    else f"; see {parser.prog} --help")
            raise ConfigError(f"{source}: {dest.replace('_', '-')!r} is not an option of "
                              f"'{parser.prog}'{hint}")
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ConfigError(f"{source}: {flag[2:]} must be true or false, got {value!r}")
            words += [flag] if value else []
        elif isinstance(action, argparse._AppendAction):
            values = value if isinstance(value, list) else [value]
            for v in values:
                words += [flag, _word(v)]
        elif action.nargs in ("+", "*") or isinstance(action.nargs, int):
            values = value if isinstance(value, list) else [value]
            words += [flag, *map(_word, values)]
        else:
            if isinstance(value, list | dict):
                raise ConfigError(f"{source}: {flag[2:]} takes one value, got {value!r}")
            words.append(f"{flag}={_word(value)}")  # "=": a value like -1e-05 is no flag
    return words


def _word(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def resolved(args: argparse.Namespace, command: str) -> dict:
    """The options of a run as `config.toml` records them: every option that decides what
    the run computes, after defaults and resolution (None values are left out: they are the
    options' defaults)."""
    out = {"command": command}
    for key, value in sorted(vars(args).items()):
        if key in PRESENTATION or key in ("func", "command") or value is None:
            continue
        out[key] = str(value) if isinstance(value, Path) else value
    return out


def dumps(options: dict) -> str:
    """`options` ({dest: value}: strings, numbers, booleans, lists of them) as TOML, with
    the options' command-line names."""
    lines = ["# fedmtl run configuration: every option as the run resolved it.",
             "# Rerun with: fedmtl rerun <this folder>  (or: fedmtl compare --config <file>)"]
    for key, value in options.items():
        lines.append(f"{key.replace('_', '-')} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to a config file")


def fingerprint(options: dict) -> str:
    """A short hash of a run's resolved options (checkpoints refuse to resume another run)."""
    kept = {k: v for k, v in options.items() if k != "checkpoint_every"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]
