"""The research-tooling commands: options from a config file (`--config`), resuming a killed
run (`--resume`), `fedmtl rerun` (reproduce a results folder and check it) and `fedmtl plot`
(its figures)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from fedmtl import configs, plots
from fedmtl.cli_common import CliError
from fedmtl.output import CONFIG, PER_NODE, RESULTS, SEEDS, seed_folders

TRAINING = ("run", "compare")


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The subcommand parser of `command`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    raise CliError(f"no command {command!r}")


def _recorded(folder: Path) -> dict:
    """The options a results folder's config.toml records ({dest: value}, "command")."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CliError(f"{folder} holds no {CONFIG}: not a results folder written by "
                       "`fedmtl run` or `fedmtl compare`")
    options = configs.read(path)
    if options.get("command") not in TRAINING:
        raise CliError(f"{path}: command must be one of {', '.join(TRAINING)}, got "
                       f"{options.get('command')!r}")
    return options


def _parse(parser, options: dict, source: str, more: list[str]) -> argparse.Namespace:
    """The namespace of `options` (a config) followed by command-line words `more`."""
    command = options["command"]
    words = configs.to_argv(options, _command_parser(parser, command), source)
    return parser.parse_args([command, *words, *more])


def _presentation(args, into: argparse.Namespace) -> argparse.Namespace:
    for key in configs.PRESENTATION:
        if hasattr(args, key):
            setattr(into, key, getattr(args, key))
    return into


def with_config(parser: argparse.ArgumentParser, args: argparse.Namespace,
                argv: list[str]) -> argparse.Namespace:
    """`args` of `fedmtl run/compare` with `--config FILE` or `--resume DIR` applied.

    --config: the file's options, then the command line's (which win). --resume DIR: the
    options DIR's config.toml recorded, with DIR as --out; only options that show the run
    (--quiet, --json-lines, --plots, ...) may accompany it.
    """
    if args.resume is not None:
        defaults = parser.parse_args([args.command])
        if args.out != defaults.out:
            raise CliError("--resume continues the run in its own folder; leave out --out")
        given = [k for k, v in vars(args).items()
                 if k not in configs.PRESENTATION and getattr(defaults, k, v) != v]
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in sorted(given))
            raise CliError(f"--resume takes the options {args.resume / CONFIG} recorded; "
                           f"leave out {flags}")
        options = _recorded(args.resume)
        resumed = _presentation(args, _parse(parser, options, str(args.resume / CONFIG), []))
        resumed.out = args.resume
        return resumed
    if args.config is not None:
        options = configs.read(args.config)
        if options.get("command", args.command) != args.command:
            raise CliError(f"{args.config} is a config of `fedmtl {options['command']}`, not "
                           f"of `fedmtl {args.command}`")
        options["command"] = args.command
        return _parse(parser, options, str(args.config), argv[1:])
    return args


def check_resumable(folder: Path, names: list[str], fingerprint: str) -> None:
    """CliError unless results folder `folder` holds checkpoints to resume, each of this
    run (the same fingerprint); checked before the folder is touched."""
    from fedmtl.checkpoints import Checkpoints

    where = Path(folder) / "checkpoints"
    if not where.is_dir():
        raise CliError(f"{folder} holds no checkpoints/: its run did not use "
                       "--checkpoint-every, so there is nothing to resume")
    for name in names:
        if not (where / name).is_dir():
            continue
        with Checkpoints(where / name) as saved:
            meta = saved.meta()
        if meta is not None and meta.get("fingerprint") != fingerprint:
            raise CliError(f"{where / name} holds the checkpoints of another run (its options "
                           f"differ from {Path(folder) / CONFIG}); nothing was changed")


def differences(a: Path, b: Path) -> list[str]:
    """What differs between two results folders' results.json and per_node.csv (empty when
    they are the same); of two seed sweeps' folders (`--seeds`), between their seeds.json and
    each seed's folder (prefixed "seed-<s>/")."""
    if (a / SEEDS).is_file():
        return _seed_differences(a, b)
    found = []
    left, right = (json.loads((f / RESULTS).read_text()) for f in (a, b))
    for key in sorted(set(left) | set(right)):
        if key == "algorithms":
            for name in sorted(set(left[key]) | set(right[key])):
                if left[key].get(name) != right[key].get(name):
                    found.append(f"results.json: algorithm {name}")
        elif left.get(key) != right.get(key):
            found.append(f"results.json: {key}")
    if (a / PER_NODE).read_text() != (b / PER_NODE).read_text():
        found.append(f"{PER_NODE}: per-node metrics")
    return found


def _seed_differences(a: Path, b: Path) -> list[str]:
    if not (b / SEEDS).is_file():
        return [f"{SEEDS}: missing in {b}"]
    left, right = (json.loads((f / SEEDS).read_text()) for f in (a, b))
    found = [f"{SEEDS}: {key}" for key in sorted(set(left) | set(right))
             if left.get(key) != right.get(key)]
    ours, theirs = ([p.name for p in seed_folders(f)] for f in (a, b))
    if ours != theirs:
        return [*found, f"seed folders: {', '.join(ours)} against {', '.join(theirs)}"]
    for name in ours:
        found += [f"{name}/{d}" for d in differences(a / name, b / name)]
    return found


def _results_file(folder: Path) -> Path:
    """The deterministic summary of a results folder: seeds.json of a seed sweep's, else
    results.json."""
    return folder / SEEDS if (folder / SEEDS).is_file() else folder / RESULTS


def rerun(args, console, train: Callable, parser: argparse.ArgumentParser) -> int:
    """`fedmtl rerun DIR`: the run DIR's config.toml records, into --out (default
    DIR-rerun), then whether it reproduced DIR's results exactly (exit 1 if not)."""
    folder = Path(args.folder).resolve()
    options = _recorded(folder)
    out = args.out or folder.with_name(folder.name + "-rerun")
    if out.resolve() == folder.resolve():
        raise CliError("rerun writes into another folder than the one it reproduces: "
                       "give --out")
    again = _presentation(args, _parse(parser, options, str(folder / CONFIG), []))
    again.out = out
    status = train(again, console)
    if status:
        return status
    summary = _results_file(folder)
    if not summary.is_file():
        raise CliError(f"{folder} holds no {RESULTS} to check the rerun against")
    found = differences(folder, out)
    if json.loads(summary.read_text()).get("status") != "complete":
        console.print(f"[yellow]note[/]: {folder} records an incomplete run")
    if found:
        console.print(f"[red]not reproduced[/]: {out} differs from {folder} in " + "; ".join(found))
        return 1
    what = ("seeds.json and per-seed results" if summary.name == SEEDS
            else "results.json and per_node.csv")
    console.print(f"reproduced: {out} has the same {what} as {folder}")
    return 0


def plot(args, console) -> int:
    """`fedmtl plot DIR`: the figures of a results folder into DIR/plots."""
    try:
        paths = plots.plot_results(Path(args.folder))
    except plots.PlotError as e:
        raise CliError(str(e)) from None
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def add_tooling_commands(sub, train: Callable, parser: argparse.ArgumentParser) -> None:
    """`fedmtl rerun` and `fedmtl plot`; `train(args, console)` runs a training command."""
    p = sub.add_parser(
        "rerun", help="reproduce a results folder from its config.toml and check the results",
        description="Run again what a results folder's config.toml records, into another "
        "folder, and say whether results.json and per_node.csv came out the same (exit 1 if "
        "not).")
    p.add_argument("folder", type=Path, metavar="DIR", help="the results folder to reproduce")
    p.add_argument("--out", type=Path, default=None,
                   help="where the rerun writes (default DIR-rerun)")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="no progress and no report")
    shown.add_argument("--json-lines", action="store_true",
                       help="progress as JSON lines on stdout")
    p.add_argument("--plots", action="store_true", help="also write the figures")
    p.set_defaults(func=lambda args, console: rerun(args, console, train, parser))
    q = sub.add_parser(
        "plot", help="draw a results folder's figures (PNG and PDF) into DIR/plots",
        description="Learning curves (with --eval-every), per-node scatter of personalized "
        "vs global and vs local, the distribution of per-node gains, the metric against node "
        "size, and MOCHA's learned task correlations, from the files of a results folder.")
    q.add_argument("folder", type=Path, metavar="DIR", help="a results folder")
    q.set_defaults(func=plot)


def argv_or_sys(argv: list[str] | None) -> list[str]:
    return list(sys.argv[1:] if argv is None else argv)
