"""fedmtl: personalized federated multi-task learning. Train algorithms on the same nodes
and compare, per node, the global, the personalized and each node's own local model."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from rich.console import Console

from fedmtl import __version__, configs, learning_curves, plots, progress, tycoon
from fedmtl import algorithms as algos
from fedmtl.algorithms.recipes import Recipe
from fedmtl.cli_arguments import (  # noqa: F401  (load_data, DEFAULT_*: the CLI's API)
    DATASETS,
    DEFAULT_LR,
    DEFAULT_ROUNDS,
    add_data_arguments,
    add_output_arguments,
    add_training_arguments,
    build_algorithms,
    load_data,
)
from fedmtl.cli_common import CliError, _Parser, finish
from fedmtl.cli_federation import (  # noqa: F401  (federation, robustness: the CLI's API)
    add_robustness_arguments,
    add_systems_arguments,
    check_robustness_options,
    check_systems,
    check_systems_options,
    federation,
    recorded,
    robustness,
    robustness_line,
    systems_line,
)
from fedmtl.cli_privacy import add_privacy_arguments, check_privacy_options, print_privacy
from fedmtl.cli_seeds import seeds_of, train_seeds
from fedmtl.cli_tooling import (
    TRAINING,
    add_tooling_commands,
    argv_or_sys,
    check_resumable,
    with_config,
)
from fedmtl.experiment import Checkpointing, compare
from fedmtl.objectives import HIGHER_IS_BETTER
from fedmtl.output import ResultsFolder, check_writable
from fedmtl.report import format_metric, headline_metrics, print_report, summarize


def resolved_config(args, algorithms: list, resolved: dict | None = None,
                    robustness_record: dict | None = None) -> dict:
    """Every option of the run, defaults included, plus what they resolved to (the output
    folder is left out: it says where the results went, not how they were made), each
    algorithm's hyper-parameters (`resolved`, from `build_algorithms`) and the robust rule
    and attack with their parameters (`robustness_record`, from `robustness`). Options that
    only show or place the run (`configs.PRESENTATION`) are left out too."""
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
               if k not in ("func", *configs.PRESENTATION)
               and not (k == "seeds" and v is None)}  # a plain run records no --seeds
    first = algorithms[0]
    model = (first.concrete(args.seed) if isinstance(first, Recipe) else first).model
    return {
        "options": options,
        "algorithms": [a.name for a in algorithms],
        "hyperparameters": resolved or {},
        "robustness": robustness_record or {"aggregator": None, "attack": None},
        "model": {"name": args.model, "hidden": args.hidden if args.model == "mlp" else None,
                  "norm": args.norm,
                  "parameters": model.num_params()},
    }


def takeaway(comparison) -> str | None:
    """One line on what the reader should notice: where personalization beats the global and
    the local model, from this run's own numbers."""
    data = comparison.data
    metric = headline_metrics(data.task, data.num_classes)[-1]  # AUC for binary tasks
    rows = [r for r in summarize(comparison)
            if r["metric"] == metric and r["node_mean"] is not None]
    personalized = [r for r in rows if r["kind"] == "personalized"]
    glob = [r for r in rows if r["kind"] == "global"]
    local = [r for r in rows if r["kind"] == "local"]
    if not personalized or not local:
        return None
    best = max(personalized, key=lambda r: r["node_mean"] * (1 if HIGHER_IS_BETTER[metric] else -1))
    show = lambda v: format_metric(v, metric)
    parts = [f"each node's own local model {show(local[0]['node_mean'])}"]
    parts += [f"{r['algorithm']}'s global model {show(r['node_mean'])} (its worst 10% of nodes "
              f"{show(r['worst10'])})" for r in glob]
    parts += [f"{r['algorithm']} personalized {show(r['node_mean'])}" for r in personalized]
    return (f"Notice, {metric} per node on average: " + "; ".join(parts) + f". The best "
            f"personalized model ({best['algorithm']}) beats the local one on "
            f"{100 * best['beats_local']:.0f}% of nodes.")


def display(args, console: Console, names: list[str], rounds: int, metric: str):
    """How the run shows its progress: bars, nothing (--quiet) or JSON lines (--json-lines)."""
    if args.quiet:
        return progress.Quiet()
    if args.json_lines:
        return progress.JsonLines(rounds, metric)
    return progress.Bars(console, names, rounds, metric)


def check_tooling_options(args) -> None:
    """The optional parts a run's options need, before any data is loaded."""
    if args.plots and not plots.available():
        raise CliError("--plots needs matplotlib: pip install 'fedmtl[plots]'")
    if args.tensorboard and not learning_curves.tensorboard_available():
        raise CliError("--tensorboard needs tensorboardX: pip install 'fedmtl[tensorboard]'")


def run_comparison(names: list[str], args, console: Console) -> int:
    """`fedmtl run` / `fedmtl compare`: train, write the results folder, report."""
    folder = check_writable(args.out)  # before any data is loaded or model trained
    if args.json_lines:  # stdout carries the progress events only
        console = Console(stderr=True)
    elif args.quiet:
        console = Console(quiet=True)
    check_tooling_options(args)
    seeds = seeds_of(args)  # None: one run
    if seeds is None:
        args.seeds = None  # --seeds 1 is the plain run, recorded as one
    if args.lr is None:
        args.lr = DEFAULT_LR.get(args.dataset, DEFAULT_LR["other data sets"])
    options = configs.resolved(args, args.command)  # what config.toml records
    every = "all" in names
    if every:  # every algorithm of the library, in the registry's order
        names = list(dict.fromkeys([*algos.ALGORITHMS, *(n for n in names if n != "all")]))
    check_systems_options(args)
    check_robustness_options(args)
    check_privacy_options(args)
    data = load_data(args)
    if "local" not in names:
        names = ["local", *names]  # the local-only column every report needs
    notes: list[str] = []
    resolved: dict = {}
    algorithms = build_algorithms(names, data, args, frozenset(names) if every else frozenset(),
                                  notes, resolved, per_seed=seeds is not None)
    for note in notes:
        console.print(f"[yellow]note[/]: {note}")
    fed = federation(args, data.num_nodes)
    record = robustness(args, data.num_nodes)[2]
    if fed.cohort_size is not None and fed.cohort_size > data.num_nodes:
        raise CliError(f"--cohort-size {fed.cohort_size} exceeds the {data.num_nodes} nodes")
    check_systems(fed, data, algorithms)
    console.print(f"[bold]data[/]: {args.dataset}: {data.summary()}")
    if robustness_line(record):
        console.print(f"[bold]robustness[/]: {robustness_line(record)}")
    resume = args.resume is not None
    checkpointing = None
    if args.checkpoint_every is not None or resume:
        checkpointing = Checkpointing(folder / "checkpoints", args.checkpoint_every, resume,
                                      configs.fingerprint(options))
    if resume:  # before the folder is claimed: a refused resume must not cost its results
        check_resumable(folder, [a.name for a in algorithms], checkpointing.fingerprint)
    config = resolved_config(args, algorithms, resolved, record)
    metric = headline_metrics(data.task, data.num_classes)[0]
    if seeds is not None:
        shown = display(args, console, [a.name for a in algorithms], fed.rounds, metric)
        return train_seeds(args, console, shown, seeds, data, algorithms, fed, record, config,
                           configs.dumps(options))
    results = ResultsFolder.open(folder, config, sys.argv[1:], config_toml=configs.dumps(options),
                                 tensorboard=args.tensorboard, resumed=resume)
    # results.json records the federation; its aggregator and attack hold functions
    as_recorded = lambda c: dataclasses.replace(c, federation=recorded(c.federation, record))
    try:
        with display(args, console, [a.name for a in algorithms], fed.rounds, metric) as shown:
            running = []

            def on_start(name):
                running.append(name)
                shown.start(name)

            def on_done(so_far):
                name = running[-1]
                found = next(x for x in (*so_far.results, *so_far.failures) if x.name == name)
                shown.done(name, found in so_far.failures, found.seconds)
                results.update(as_recorded(so_far))

            comparison = compare(algorithms, data, fed, shown.update, on_start=on_start,
                                 on_done=on_done, checkpointing=checkpointing)
    except BaseException:
        results.close(status="interrupted")
        raise
    paths = results.close(as_recorded(comparison))
    if args.plots:
        paths += plots.plot_results(folder)
    if comparison.results:
        print_report(comparison, console, args.show_nodes)
        line = takeaway(comparison)
        if line:
            console.print(line)
        if not fed.systems.is_neutral:
            for result in comparison.results:
                line = systems_line(result.name, result.history)
                if line:
                    console.print(f"[bold]systems[/]: {line}")
        print_privacy(comparison.results, console)
    return finish(paths, comparison.failures, len(algorithms), folder, console)


def algorithm_list() -> str:
    """The registry, one line per algorithm (for --help)."""
    width = max(map(len, algos.ALGORITHMS))
    return "\n".join(f"  {name:<{width}}  {algos.SUMMARIES[name]}" for name in algos.ALGORITHMS)


REPORT_HELP = """\
the report: one row per node, one column per algorithm and model kind, each the node's test
accuracy (classification) or RMSE in the data's units (regression):
  local / local          the node's own model, trained on its data only
  fedavg / global        FedAvg's single global model
  fedavg / personalized  the global model after --finetune-steps local steps on the node
  fedper / personalized  FedPer's shared body with the node's own head; FedPer has no global
                         row, because its shared body is not a model without a head
  mocha / personalized   MOCHA: shared body, own head coupled to the others' by a learned
                         task relationship (no global row either)
  ditto / global         Ditto's global model (FedAvg); ditto / personalized: the node's own
                         model, trained with a pull toward the global one
then a summary per column: wtd (mean weighted by test examples), mean and std over nodes,
worst10 (mean of the worst 10% of nodes), and for personalized models >glob / >local, the
share of nodes where it is strictly better than the global / the local model.
files in --out: results.json (configuration, summaries, histories), per_node.csv (every
node), run.json (status, times, package versions, device, git commit).
with --seeds S: seed-<s>/ (such a folder per training seed), seeds.json (mean ± s.e. over
the seeds of each column's node mean, worst10 and >local), run.json and config.toml."""


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedmtl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fedmtl {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, title="commands",
                                metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter
    run = sub.add_parser(
        "run", help="train one algorithm beside the local baseline and report per node",
        description="Train one algorithm and the local-only baseline on the same nodes and "
        "seed, then report every node's test metric side by side.",
        epilog=REPORT_HELP, formatter_class=raw)
    run.add_argument("--algorithm", default="fedavg",
                     help=f"one of {', '.join(algos.ALGORITHMS)} (default fedavg)")
    cmp_ = sub.add_parser(
        "compare", help="train several algorithms on the same nodes and seed, report per node",
        description="Train several algorithms (and the local-only baseline) on the same "
        "nodes with the same seed, then report every node's test metric side by side.\n\n"
        "algorithms:\n" + algorithm_list(),
        epilog=REPORT_HELP, formatter_class=raw)
    cmp_.add_argument("--algorithms", default="local,fedavg,fedper",
                      help="comma-separated names (listed above), or all: every algorithm "
                      "that applies to the model (default local,fedavg,fedper)")
    for p in (run, cmp_):
        add_data_arguments(p)
        add_training_arguments(p)
        add_systems_arguments(p)
        add_robustness_arguments(p)
        add_privacy_arguments(p)
        add_output_arguments(p)
    tycoon.add_parser(sub)
    add_tooling_commands(sub, train, parser)
    return parser


def train(args, console: Console) -> int:
    """`fedmtl run` or `fedmtl compare` with parsed (and config-resolved) `args`."""
    if args.command == "run":
        return run_comparison([args.algorithm], args, console)
    names = [n.strip() for n in args.algorithms.split(",") if n.strip()]
    if not names:
        raise CliError("--algorithms is empty")
    return run_comparison(names, args, console)


def _one_line(error: BaseException) -> str:
    """An error as one line: its message, or for a bare OSError its reason and file."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    console = Console()
    try:
        parser = make_parser()
        args = parser.parse_args(argv)
        if args.command is None:  # a newcomer's first call: say what there is
            parser.print_help()
            return 0
        if args.command in TRAINING:
            return train(with_config(parser, args, argv_or_sys(argv)), console)
        return args.func(args, console)
    except CliError as e:
        print(f"fedmtl: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError, FloatingPointError) as e:  # say it in one line
        print(f"fedmtl: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedmtl: interrupted", file=sys.stderr)
        return 130
