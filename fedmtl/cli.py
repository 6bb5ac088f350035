"""`fedmtl` command line: run or compare algorithms and report per-node results side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedmtl import algorithms as algos
from fedmtl import models
from fedmtl.data import FederatedData
from fedmtl.engine import Federation
from fedmtl.experiment import compare
from fedmtl.report import print_report, write_results

DATASETS = ("synthetic", "synthetic-iid", "turbofan", "vehicle", "har", "har-sitting")


class CliError(Exception):
    """A bad argument or input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise CliError(message)


def bounded(kind=int, *, minimum=None, above=None):
    """An argparse type: a `kind` number that is >= `minimum` or > `above`."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be > {above}")
        return value

    return parse


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic", choices=DATASETS,
                   help="federated data set (default: synthetic, i.e. Synthetic(alpha, beta))")
    g.add_argument("--alpha", type=bounded(float, minimum=0), default=1.0,
                   help="Synthetic: std of the per-node model means (default 1)")
    g.add_argument("--beta", type=bounded(float, minimum=0), default=1.0,
                   help="Synthetic: std of the per-node feature means (default 1)")
    g.add_argument("--nodes", type=bounded(int, minimum=1), default=30,
                   help="Synthetic: nodes (default 30)")
    g.add_argument("--max-node-size", type=bounded(int, minimum=1), default=None,
                   help="Synthetic: cap on examples per node (default: none)")
    g.add_argument("--test-fraction", type=float, default=0.25,
                   help="per-node test share (default 0.25)")
    g.add_argument("--data-dir", type=Path, default=None,
                   help="folder with the data sets (default: $FEDMTL_DATA or ~/.fedmtl/data)")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--model", default="mlp", choices=("mlp", "logreg", "conv1d"),
                   help="built-in model; the MLP's output layer is its 'head' (default mlp)")
    g.add_argument("--hidden", type=bounded(int, minimum=1), nargs="+", default=[64],
                   help="MLP hidden sizes (default 64)")
    g.add_argument("--rounds", type=bounded(int, minimum=0), default=50, help="rounds (default 50)")
    g.add_argument("--cohort-size", type=bounded(int, minimum=1), default=None,
                   help="nodes sampled per round (default: all)")
    g.add_argument("--local-epochs", type=bounded(int, minimum=1), default=1, help="default 1")
    g.add_argument("--batch-size", type=bounded(int, minimum=1), default=10, help="default 10")
    g.add_argument("--lr", type=bounded(float, above=0), default=0.05,
                   help="local SGD learning rate (default 0.05)")
    g.add_argument("--server-lr", type=bounded(float, above=0), default=1.0,
                   help="server SGD learning rate on the averaged delta (default 1: FedAvg)")
    g.add_argument("--finetune-steps", type=bounded(int, minimum=0), default=5,
                   help="local steps that personalize a global model before testing "
                   "(default 5; 0 disables)")
    g.add_argument("--seed", type=int, default=0, help="seed of data split and training")


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=Path("results"),
                   help="folder for results.json and per_node.csv (default ./results)")
    g.add_argument("--show-nodes", type=int, default=10,
                   help="nodes shown in the per-node table (default 10; -1: all)")


def load_data(args) -> FederatedData:
    """The data set named by --dataset."""
    name = args.dataset
    if name in ("synthetic", "synthetic-iid"):
        from fedmtl.synthetic import synthetic

        return synthetic(args.alpha, args.beta, num_nodes=args.nodes, iid=name.endswith("iid"),
                         max_size=args.max_node_size, test_fraction=args.test_fraction,
                         seed=args.seed)
    from fedmtl import datasets

    if name == "turbofan":
        return datasets.turbofan(seed=args.seed, data_dir=args.data_dir).data
    if name == "vehicle":
        return datasets.vehicle(test_fraction=args.test_fraction, seed=args.seed,
                                data_dir=args.data_dir)
    task = "sitting" if name == "har-sitting" else "activity"
    features = "raw" if args.model == "conv1d" else "stats"
    return datasets.har(task, features, test_fraction=args.test_fraction, seed=args.seed,
                        data_dir=args.data_dir)


def build_algorithms(names: list[str], data: FederatedData, args) -> list[algos.Algorithm]:
    unknown = [n for n in names if n not in algos.ALGORITHMS]
    if unknown:
        raise CliError(f"unknown algorithm(s) {', '.join(unknown)}; "
                       f"choose from {', '.join(algos.ALGORITHMS)}")
    outputs = data.num_classes or 1
    result = []
    for name in names:
        module = models.build(args.model, data.feature_shape, outputs, seed=args.seed,
                              hidden=args.hidden)
        kwargs = {"local_optimizer": args.lr}
        if name != "local":
            kwargs["server_optimizer"] = args.server_lr
        result.append(algos.ALGORITHMS[name](module, **kwargs))
    return result


def federation(args) -> Federation:
    return Federation(
        rounds=args.rounds, cohort_size=args.cohort_size, local_epochs=args.local_epochs,
        batch_size=args.batch_size, finetune_steps=args.finetune_steps, seed=args.seed,
        rounds_per_sync=max(1, min(10, args.rounds // 10 or 1)),
    )


def run_comparison(names: list[str], args, console: Console) -> int:
    data = load_data(args)
    if "local" not in names:
        names = ["local", *names]  # the local-only column every report needs
    algorithms = build_algorithms(names, data, args)
    fed = federation(args)
    if fed.cohort_size is not None and fed.cohort_size > data.num_nodes:
        raise CliError(f"--cohort-size {fed.cohort_size} exceeds the {data.num_nodes} nodes")
    console.print(f"[bold]data[/]: {args.dataset}: {data.summary()}")
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), console=console,
        transient=False,
    ) as progress:
        tasks = {
            a.name: progress.add_task(a.name, total=fed.rounds, metrics="compiling…")
            for a in algorithms
        }

        def callback(name, round_done, metrics):
            progress.update(tasks[name], completed=round_done,
                            metrics=f"round {round_done}  train loss {metrics['train_loss']:.4f}")

        result = compare(algorithms, data, fed, callback)
    print_report(result, console, args.show_nodes)
    paths = write_results(result, args.out, {"command": sys.argv[1:], "dataset": args.dataset})
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedmtl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="train one algorithm (plus the local baseline) and report")
    run.add_argument("--algorithm", default="fedavg", help="fedavg, fedper or local")
    cmp_ = sub.add_parser("compare", help="train several algorithms on the same data and seed")
    cmp_.add_argument("--algorithms", default="local,fedavg,fedper",
                      help="comma-separated (default local,fedavg,fedper)")
    for p in (run, cmp_):
        add_data_arguments(p)
        add_training_arguments(p)
        add_output_arguments(p)
    try:
        from fedmtl import tycoon
    except ImportError:  # the maintenance study is optional while it is being built
        tycoon = None
    if tycoon is not None:
        tycoon.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    console = Console()
    try:
        args = make_parser().parse_args(argv)
        if args.command == "run":
            return run_comparison([args.algorithm], args, console)
        if args.command == "compare":
            names = [n.strip() for n in args.algorithms.split(",") if n.strip()]
            if not names:
                raise CliError("--algorithms is empty")
            return run_comparison(names, args, console)
        return args.func(args, console)
    except CliError as e:
        print(f"fedmtl: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FloatingPointError) as e:  # say it in one line
        print(f"fedmtl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedmtl: interrupted", file=sys.stderr)
        return 130
