"""Command-line arguments of `fedmtl run` / `fedmtl compare` (data, training, output) and
what they build: the data set and the algorithms."""

from __future__ import annotations

import argparse
import ast
import inspect
from pathlib import Path

from fedmtl import algorithms as algos
from fedmtl import models
from fedmtl.algorithms.recipes import Recipe, recipe
from fedmtl.cli_common import CliError, bounded
from fedmtl.data import FederatedData
from fedmtl.objectives import LOSSES, balanced_class_weights

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
    g.add_argument("--eval-every", type=bounded(int, minimum=0), default=0, metavar="K",
                   help="test every node's models after every K rounds, for learning curves "
                   "(OUT/curves.jsonl; default 0: only at the end)")
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
    g.add_argument("--seeds", type=bounded(int, minimum=1), default=None, metavar="S",
                   help="train with S seeds (--seed .. --seed + S - 1), each algorithm's S "
                   "runs as one vectorized program, and report mean ± standard error over "
                   "them (OUT/seed-<s>/ per seed, OUT/seeds.json; default 1: one run). The "
                   "seed varies cohorts, shuffling, noise and fine-tuning; the data split "
                   "and the initial model stay --seed's")
    g.add_argument("--devices", type=bounded(int, minimum=1), default=None, metavar="D",
                   help="spread the nodes over the first D devices (default: every device; "
                   "on a CPU one per core, see docs/scale.md); results do not depend on it")


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=Path("results"),
                   help="folder for results.json and per_node.csv (default ./results)")
    g.add_argument("--show-nodes", type=bounded(int, minimum=-1), default=10,
                   help="nodes shown in the per-node table (default 10; -1: all)")
    g.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="read options from a TOML file (e.g. rounds = 50, algorithms = "
                   "\"local,fedavg\"); options given here override it. A results folder's "
                   "config.toml is one")
    g.add_argument("--plots", action="store_true",
                   help="also write the figures into OUT/plots (PNG and PDF; `fedmtl plot`)")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard scalars into OUT/tensorboard (tensorboardX)")
    g.add_argument("--checkpoint-every", type=bounded(int, minimum=1), default=None,
                   metavar="K", help="save each algorithm's run into OUT/checkpoints after "
                   "every K rounds and at its end (orbax), so --resume can continue it")
    g.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="continue the killed run in results folder DIR from its checkpoints, "
                   "with the options it recorded (config.toml); the results equal an "
                   "uninterrupted run's")
    shown = g.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true",
                       help="no progress and no report (batch jobs); errors still print")
    shown.add_argument("--json-lines", action="store_true",
                       help="progress as one JSON object per line on stdout (the report goes "
                       "to stderr)")


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
                     resolved: dict | None = None, *, per_seed: bool = False
                     ) -> list[algos.Algorithm | Recipe]:
    """Each named algorithm on a fresh copy of the model (its weights drawn from --seed), with
    the run's options.

    Args:
      per_seed: build `Recipe`s instead, whose weights each run's seed draws (`--seeds`): the
        run of seed --seed starts from the same weights as the algorithm.
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
    module = lambda seed: models.build(args.model, data.feature_shape, outputs, seed=seed,
                                       hidden=args.hidden,
                                       norm=None if args.norm == "none" else args.norm)
    for name in names:
        kwargs = {"local_optimizer": args.lr, "loss": args.loss}
        if args.class_weights == "balanced":
            kwargs["class_weights"] = balanced_class_weights(data.train.y, data.num_classes)
        if name != "local" and args.server_lr is not None:
            kwargs["server_optimizer"] = args.server_lr
        given = {**kwargs, **params.get(name, {})}
        try:
            factory = algos.ALGORITHMS[name]
            result.append(recipe(factory, module, **given) if per_seed
                          else factory(module(args.seed), **given))
            if resolved is not None:
                resolved[result[-1].name] = hyperparameters(name, given)
        except algos.AlgorithmError as e:
            if name not in optional:
                raise
            if notes is not None:
                notes.append(f"{name} left out: {e}")
    return result
