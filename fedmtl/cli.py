"""fedmtl: personalized federated multi-task learning. Train algorithms on the same nodes
and compare, per node, the global, the personalized and each node's own local model."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from fedmtl import __version__, models
from fedmtl import algorithms as algos
from fedmtl.cli_common import CliError, _Parser, bounded
from fedmtl.cli_federation import (
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
from fedmtl.cli_privacy import add_privacy_arguments, check_privacy_options, privacy_line
from fedmtl.data import FederatedData
from fedmtl.experiment import compare
from fedmtl.objectives import HIGHER_IS_BETTER, LOSSES, balanced_class_weights
from fedmtl.output import ResultsFolder, check_writable
from fedmtl.report import format_metric, headline_metrics, print_report, summarize

DEFAULT_ROUNDS = 50
# Learning rates that train every data set at the other defaults: turbofan's end-of-life
# cycles have extreme features (|x|^2 up to ~270), on which SGD at 0.05 diverges.
DEFAULT_LR = {"turbofan": 0.01, "other data sets": 0.05}
DATASETS = ("synthetic", "synthetic-iid", "turbofan", "vehicle", "har", "har-sitting")



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
    g.add_argument("--test-fraction", type=bounded(float, above=0, below=1), default=0.25,
                   help="per-node test share, in (0, 1) (default 0.25)")
    g.add_argument("--data-dir", type=Path, default=None,
                   help="folder with the data sets (default: $FEDMTL_DATA or ~/.fedmtl/data)")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--model", default="mlp", choices=("mlp", "logreg", "linear", "conv1d"),
                   help="built-in model; the MLP's output layer is its 'head' (default mlp); "
                   "logreg is a head alone (linear: logreg without a bias), so use them with "
                   "local, fedavg, ditto and mocha, not fedper")
    g.add_argument("--hidden", type=bounded(int, minimum=1), nargs="+", default=[64],
                   help="MLP hidden sizes (default 64)")
    g.add_argument("--norm", choices=("none", "layer"), default="none",
                   help="layer: a LayerNorm after each hidden layer of mlp / conv of conv1d "
                   "(FedBN's personal parameters; default none)")
    g.add_argument("--rounds", type=bounded(int, minimum=0), default=DEFAULT_ROUNDS,
                   help=f"rounds (default {DEFAULT_ROUNDS})")
    g.add_argument("--cohort-size", type=bounded(int, minimum=1), default=None,
                   help="nodes sampled per round (default: all)")
    g.add_argument("--local-epochs", type=bounded(int, minimum=1), default=1, help="default 1")
    g.add_argument("--batch-size", type=bounded(int, minimum=1), default=10, help="default 10")
    g.add_argument("--lr", type=bounded(float, above=0), default=None,
                   help="local SGD learning rate (default: the data set's, "
                   + ", ".join(f"{v} for {k}" for k, v in DEFAULT_LR.items()) + ")")
    g.add_argument("--server-lr", type=bounded(float, above=0), default=None,
                   help="server learning rate on the averaged delta (default: each "
                   "algorithm's own, 1 for FedAvg's plain average)")
    g.add_argument("--param", action="append", default=[], metavar="ALGORITHM.KEY=VALUE",
                   help="an algorithm's own hyper-parameter, e.g. fedprox.mu=0.1 or "
                   "ifca.clusters=3 (repeatable; each factory's docstring lists its own)")
    g.add_argument("--finetune-steps", type=bounded(int, minimum=0), default=5,
                   help="local steps that personalize a global model before testing "
                   "(default 5; 0 disables)")
    g.add_argument("--loss", choices=LOSSES, default=None,
                   help="training loss: cross_entropy (default for classification), hinge "
                   "(Crammer-Singer; the binary SVM on 2 outputs, MOCHA's setting) or squared "
                   "(the only one for regression)")
    g.add_argument("--class-weights", choices=("none", "balanced"), default="none",
                   help="weigh the training loss by class: balanced = n / (C n_c) over all "
                   "train rows, for rare classes (default none)")
    g.add_argument("--seed", type=int, default=0, help="seed of data split and training")
    g.add_argument("--devices", type=bounded(int, minimum=1), default=None, metavar="D",
                   help="spread the nodes over the first D devices (default: every device; "
                   "on a CPU one per core, see docs/scale.md); results do not depend on it")


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=Path("results"),
                   help="folder for results.json and per_node.csv (default ./results)")
    g.add_argument("--show-nodes", type=bounded(int, minimum=-1), default=10,
                   help="nodes shown in the per-node table (default 10; -1: all)")


def load_data(args) -> FederatedData:
    """The data set named by --dataset; regression targets are standardized (train mean and
    std over all nodes), so every data set trains at the default options, and
    `Engine.evaluate` reports their metrics in the raw units (e.g. cycles)."""
    name = args.dataset
    if name in ("synthetic", "synthetic-iid"):
        from fedmtl.synthetic import synthetic

        return synthetic(args.alpha, args.beta, num_nodes=args.nodes, iid=name.endswith("iid"),
                         max_size=args.max_node_size, test_fraction=args.test_fraction,
                         seed=args.seed)
    from fedmtl import datasets

    if name == "turbofan":
        data = datasets.turbofan(seed=args.seed, data_dir=args.data_dir).data
    elif name == "vehicle":
        data = datasets.vehicle(test_fraction=args.test_fraction, seed=args.seed,
                                data_dir=args.data_dir)
    else:
        task = "sitting" if name == "har-sitting" else "activity"
        features = "raw" if args.model == "conv1d" else "stats"
        data = datasets.har(task, features, test_fraction=args.test_fraction, seed=args.seed,
                            data_dir=args.data_dir)
    return data.standardize_targets() if data.task == "regression" else data


def parse_params(items: list[str], names: list[str]) -> dict[str, dict]:
    """`--param ALGORITHM.KEY=VALUE` options as {algorithm: {key: value}}; VALUE is a Python
    literal (0.1, 3, True, 'head') or else taken as a string.

    Raises:
      CliError: a malformed item, an algorithm not in the run, or a keyword its factory does
        not take (the message lists the ones it does).
    """
    params: dict[str, dict] = {}
    for item in items:
        head, sep, raw = item.partition("=")
        algorithm, dot, key = head.strip().partition(".")
        if not (sep and dot and algorithm and key):
            raise CliError(f"--param {item!r}: expected ALGORITHM.KEY=VALUE, e.g. fedprox.mu=0.1")
        if algorithm not in names:
            raise CliError(f"--param {item!r}: {algorithm} is not among the algorithms run "
                           f"({', '.join(names)})")
        accepted = list(keyword_defaults(algorithm))
        if key not in accepted:
            raise CliError(f"--param {item!r}: {algorithm} takes no {key!r}; it takes "
                           f"{', '.join(accepted)}")
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        params.setdefault(algorithm, {})[key] = value
    return params


def keyword_defaults(name: str) -> dict:
    """{keyword: default} of algorithm `name`'s factory (its keyword-only arguments)."""
    signature = inspect.signature(algos.ALGORITHMS[name]).parameters.values()
    return {p.name: p.default for p in signature if p.kind is p.KEYWORD_ONLY}


def hyperparameters(name: str, given: dict) -> dict:
    """Every keyword of algorithm `name`'s factory as it was built: `given` over the defaults
    (class weights, an array, are recorded by the --class-weights option instead)."""
    resolved = {**keyword_defaults(name), **given}
    plain = lambda v: v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)
    return {k: plain(v) for k, v in resolved.items() if k != "class_weights"}


def build_algorithms(names: list[str], data: FederatedData, args,
                     optional: frozenset = frozenset(), notes: list | None = None,
                     resolved: dict | None = None) -> list[algos.Algorithm]:
    """Each named algorithm on a fresh copy of the model, with the run's options.

    Args:
      optional: names that are left out, with a line in `notes`, when they do not apply to
        the model (their factory raises `AlgorithmError`, e.g. FedPer on a model without a
        body): what `--algorithms all` runs.
      resolved: filled with each built algorithm's `hyperparameters`.
    """
    unknown = [n for n in names if n not in algos.ALGORITHMS]
    if unknown:
        raise CliError(f"unknown algorithm(s) {', '.join(unknown)}; "
                       f"choose from {', '.join(algos.ALGORITHMS)} or all")
    if data.task == "regression" and args.loss not in (None, "squared"):
        raise CliError(f"--loss {args.loss} is for classification; {args.dataset} is regression "
                       "(use squared, the default)")
    if args.class_weights == "balanced" and data.task != "classification":
        raise CliError("--class-weights balanced needs a classification task")
    params = parse_params(args.param, names)
    outputs = data.num_classes or 1
    result = []
    for name in names:
        module = models.build(args.model, data.feature_shape, outputs, seed=args.seed,
                              hidden=args.hidden, norm=None if args.norm == "none" else args.norm)
        kwargs = {"local_optimizer": args.lr, "loss": args.loss}
        if args.class_weights == "balanced":
            kwargs["class_weights"] = balanced_class_weights(data.train.y, data.num_classes)
        if name != "local" and args.server_lr is not None:
            kwargs["server_optimizer"] = args.server_lr
        given = {**kwargs, **params.get(name, {})}
        try:
            result.append(algos.ALGORITHMS[name](module, **given))
            if resolved is not None:
                resolved[result[-1].name] = hyperparameters(name, given)
        except algos.AlgorithmError as e:
            if name not in optional:
                raise
            if notes is not None:
                notes.append(f"{name} left out: {e}")
    return result


def resolved_config(args, algorithms: list[algos.Algorithm], resolved: dict | None = None,
                    robustness_record: dict | None = None) -> dict:
    """Every option of the run, defaults included, plus what they resolved to (the output
    folder is left out: it says where the results went, not how they were made), each
    algorithm's hyper-parameters (`resolved`, from `build_algorithms`) and the robust rule
    and attack with their parameters (`robustness_record`, from `robustness`)."""
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
               if k not in ("func", "out")}
    model = algorithms[0].model
    return {
        "options": options,
        "algorithms": [a.name for a in algorithms],
        "hyperparameters": resolved or {},
        "robustness": robustness_record or {"aggregator": None, "attack": None},
        "model": {"name": args.model, "hidden": args.hidden if args.model == "mlp" else None,
                  "norm": args.norm,
                  "parameters": model.num_params()},
    }


class RateColumn(ProgressColumn):
    """Rounds per second of one algorithm's bar."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.2f} rounds/s", style="progress.data.speed")


def progress_bars(console: Console) -> Progress:
    """One bar per algorithm; each bar's clock starts when its algorithm starts compiling."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
        TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), console=console, transient=False,
    )


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


def run_comparison(names: list[str], args, console: Console) -> int:
    folder = check_writable(args.out)  # before any data is loaded or model trained
    if args.lr is None:
        args.lr = DEFAULT_LR.get(args.dataset, DEFAULT_LR["other data sets"])
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
                                  notes, resolved)
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
    results = ResultsFolder.open(folder, resolved_config(args, algorithms, resolved, record),
                                 sys.argv[1:])
    # results.json records the federation; its aggregator and attack hold functions
    as_recorded = lambda c: dataclasses.replace(c, federation=recorded(c.federation, record))
    try:
        with progress_bars(console) as progress:
            tasks = {a.name: progress.add_task(a.name, total=fed.rounds, metrics="waiting",
                                               start=False) for a in algorithms}

            running = []

            def on_start(name):
                running.append(name)
                progress.start_task(tasks[name])
                progress.update(tasks[name], metrics="compiling…")

            def callback(name, round_done, metrics):
                progress.update(tasks[name], completed=round_done,
                                metrics=f"train loss {metrics['train_loss']:.4f}")

            def on_done(so_far):
                name = running[-1]
                failed = any(f.name == name for f in so_far.failures)
                progress.update(tasks[name], metrics="[red]failed[/]" if failed else "done")
                progress.stop_task(tasks[name])
                results.update(as_recorded(so_far))

            comparison = compare(algorithms, data, fed, callback, on_start=on_start,
                                 on_done=on_done)
    except BaseException:
        results.close(status="interrupted")
        raise
    paths = results.close(as_recorded(comparison))
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
        for result in comparison.results:
            line = privacy_line(result.privacy)
            if line:
                console.print(f"[bold]privacy[/]: {result.name}: {line}")
    console.print("wrote " + ", ".join(str(p) for p in paths))
    for f in comparison.failures:
        console.print(f"[red]failed[/]: {f.error}")
    if comparison.failures:
        raise CliError(f"{len(comparison.failures)} of {len(algorithms)} algorithm(s) failed "
                       f"({', '.join(f.name for f in comparison.failures)}); the others' "
                       f"results are in {folder}")
    return 0


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
node), run.json (status, times, package versions, device, git commit)."""


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
    try:
        from fedmtl import tycoon
    except ImportError:  # the maintenance study is optional while it is being built
        tycoon = None
    if tycoon is not None:
        tycoon.add_parser(sub)
    return parser


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
    except (ValueError, OSError, FloatingPointError) as e:  # say it in one line
        print(f"fedmtl: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedmtl: interrupted", file=sys.stderr)
        return 130
