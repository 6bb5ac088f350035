"""The command line's federation options: the systems model (sampling, stragglers, dropouts,
availability, the clock) and Byzantine robustness (a robust rule, an attack), turned into a
`Federation`, checked before anything trains, and summarised after."""

from __future__ import annotations

import argparse
import inspect
import math

import numpy as np

from fedmtl import algorithms as algos
from fedmtl import attacks as attacks_lib
from fedmtl import robust
from fedmtl import systems as systems_lib
from fedmtl.attacks import AttackError
from fedmtl.cli_common import CliError, bounded
from fedmtl.cli_privacy import privacy, secure_aggregation
from fedmtl.data import FederatedData
from fedmtl.engine import Engine, Federation
from fedmtl.privacy import PrivacyError
from fedmtl.robust import RobustnessError
from fedmtl.secagg import SecAggError
from fedmtl.systems import Systems, SystemsError

SYSTEMS_HELP = """\
who takes part in each round, how much of its work each node does, and how long a round
takes on a simulated clock (docs/systems.md). A time unit is one local step of a node of
speed 1. Without these options every sampled node does all its work and reports."""


def add_systems_arguments(p: argparse.ArgumentParser) -> None:
    share = bounded(float, minimum=0, maximum=1)
    g = p.add_argument_group("systems", SYSTEMS_HELP)
    g.add_argument("--sampling", choices=systems_lib.SAMPLINGS, default="uniform",
                   help="uniform: --cohort-size nodes (default: all); poisson: each node with "
                   "probability --sample-rate; weighted: --cohort-size nodes with probability "
                   "∝ examples, averaged with equal weights (default uniform)")
    g.add_argument("--sample-rate", type=bounded(float, above=0, maximum=1), default=None,
                   metavar="Q", help="Poisson sampling: each node's probability, in (0, 1]")
    g.add_argument("--stragglers", type=share, default=0.0, metavar="P",
                   help="share of each cohort that completes only part of its work, in "
                   "[0, 1] (default 0)")
    g.add_argument("--straggler-work", type=share, nargs=2, default=None, metavar=("A", "B"),
                   help="a straggler completes a share of its work units drawn uniformly "
                   "from [A, B], at least one unit and fewer than all (default 0 1)")
    g.add_argument("--straggler-unit", choices=systems_lib.UNITS, default=None,
                   help="a straggler's work units: local steps, or whole epochs (FedProx's "
                   "rule with --straggler-work 0 1) (default step)")
    g.add_argument("--straggler-policy", choices=systems_lib.POLICIES, default="drop",
                   help="drop: a straggler's update is discarded (FedAvg's practice); keep: its "
                   "partial work is aggregated (FedProx's) (default drop)")
    g.add_argument("--dropout", type=share, default=0.0, metavar="P",
                   help="probability that a sampled node fails to report, in [0, 1] (default 0)")
    g.add_argument("--join-by", type=bounded(int, minimum=0), default=None, metavar="R",
                   help="each node joins in a round drawn uniformly from 0..R (default 0)")
    g.add_argument("--stay", type=bounded(int, minimum=1), default=None, metavar="R",
                   help="rounds each node stays after it joins (default: to the end)")
    g.add_argument("--period", type=bounded(int, minimum=1), default=None, metavar="R",
                   help="availability cycle of R rounds, each node at its own random phase "
                   "(default: always available)")
    g.add_argument("--uptime", type=bounded(float, above=0, maximum=1), default=None,
                   metavar="U", help="share of each --period a node is available, in (0, 1] "
                   "(default 1)")
    g.add_argument("--speed-spread", type=bounded(float, minimum=0), default=0.0,
                   metavar="SIGMA", help="node speeds (local steps per time unit) lognormal "
                   "with median 1 and log-std SIGMA (default 0: all 1)")
    g.add_argument("--bandwidth", type=bounded(float, above=0), default=None,
                   metavar="BYTES_PER_TIME_UNIT",
                   help="every node's upload speed (default: instant uploads)")
    g.add_argument("--deadline", type=bounded(float, above=0), default=None, metavar="T",
                   help="time units the server waits: a node finishing later does only the "
                   "steps that fit (a straggler), one that cannot upload in time drops out "
                   "(default: none)")
    g.add_argument("--capacity", type=bounded(int, minimum=1), default=None, metavar="C",
                   help="slots of a Poisson cohort; a round sampling more stops the run "
                   "(default: the expected size plus about 6 standard deviations)")


ROBUSTNESS_HELP = """\
Byzantine robustness (docs/robustness.md): a rule that replaces the weighted mean wherever an
algorithm averages uploads, and an attack by a fixed share of the nodes. Without these
options the uploads are averaged by weight and nobody lies."""

# option (argparse dest) -> (flag, the rules or attacks it applies to)
AGGREGATOR_OPTIONS = {
    "trim": ("--trim", ("trimmed_mean",)),
    "byzantine": ("--byzantine", ("krum", "multi_krum")),
    "max_norm": ("--max-norm", ("norm_bound",)),
    "tau": ("--tau", ("centered_clip",)),
}
ATTACK_OPTIONS = {
    "attack_scale": ("--attack-scale", ("sign_flip", "scaled")),
    "attack_std": ("--attack-std", ("gaussian",)),
}


def add_robustness_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("robustness", ROBUSTNESS_HELP)
    g.add_argument("--aggregator", choices=tuple(robust.AGGREGATORS), default=None,
                   help="robust rule in place of the weighted mean (default: none, i.e. the "
                   "plain weighted mean)")
    g.add_argument("--trim", type=bounded(float, minimum=0, below=0.5), default=None,
                   metavar="BETA", help="trimmed_mean: share of the reporters dropped at each "
                   "end, per coordinate, in [0, 0.5) (default 0.1)")
    g.add_argument("--byzantine", type=bounded(int, minimum=0), default=None, metavar="F",
                   help="krum / multi_krum: Byzantine nodes tolerated (default: the number "
                   "of attackers with --attackers, else 1)")
    g.add_argument("--max-norm", type=bounded(float, above=0), default=None, metavar="M",
                   help="norm_bound: every update clipped to norm M (required)")
    g.add_argument("--tau", type=bounded(float, above=0), default=None, metavar="T",
                   help="centered_clip: clipping radius (required)")
    g.add_argument("--attack", choices=tuple(attacks_lib.ATTACKS), default=None,
                   help="what the attackers do (default: no attack); label_flip is a data "
                   "attack (classification only), the others corrupt uploads")
    g.add_argument("--attackers", type=bounded(float, minimum=0, below=1), default=None,
                   metavar="FRACTION", help="share of the nodes that attack, drawn from "
                   "--seed, in [0, 1) (required with --attack)")
    g.add_argument("--attack-scale", type=bounded(float), default=None, metavar="S",
                   help="sign_flip: send -S x the update (default 1); scaled: S x the update "
                   "(default 10)")
    g.add_argument("--attack-std", type=bounded(float, minimum=0), default=None, metavar="S",
                   help="gaussian: noise std (default 1)")


def check_systems_options(args) -> None:
    """Systems options that contradict each other or would do nothing (before data loads).

    Raises:
      CliError: naming the options.
    """
    poisson = args.sampling == "poisson"
    problems = [
        (args.sample_rate is not None and not poisson,
         "--sample-rate applies to --sampling poisson only (a fixed cohort is --cohort-size)"),
        (poisson and args.sample_rate is None, "--sampling poisson needs --sample-rate Q"),
        (poisson and args.cohort_size is not None,
         "--cohort-size does not apply to --sampling poisson (its cohort is --sample-rate × "
         "nodes; --capacity sets its slots)"),
        (args.capacity is not None and not poisson,
         "--capacity applies to --sampling poisson only"),
        (args.sampling == "weighted" and args.cohort_size is None,
         "--sampling weighted needs --cohort-size (with every node taking part there is "
         "nothing to weight)"),
        (args.uptime is not None and args.period is None, "--uptime needs --period"),
        (args.straggler_work is not None and args.stragglers == 0,
         "--straggler-work applies to --stragglers only"),
        (args.straggler_unit is not None and args.stragglers == 0,
         "--straggler-unit applies to --stragglers only"),
    ]
    for bad, message in problems:
        if bad:
            raise CliError(message)
    if args.straggler_work is not None and args.straggler_work[0] > args.straggler_work[1]:
        a, b = args.straggler_work
        raise CliError(f"--straggler-work {a:g} {b:g}: expected A <= B")


def check_robustness_options(args) -> None:
    """Robustness options that do not apply to the chosen rule or attack, or are missing
    (before data loads).

    Raises:
      CliError: naming the options.
    """
    for options, chosen, kind in ((AGGREGATOR_OPTIONS, args.aggregator, "--aggregator"),
                                  (ATTACK_OPTIONS, args.attack, "--attack")):
        for dest, (flag, applies) in options.items():
            if getattr(args, dest) is not None and chosen not in applies:
                raise CliError(f"{flag} applies to {kind} {' / '.join(applies)} only"
                               + ("" if chosen is None else f", not {chosen}"))
    for rule, dest, flag in (("norm_bound", "max_norm", "--max-norm M"),
                             ("centered_clip", "tau", "--tau T")):
        if args.aggregator == rule and getattr(args, dest) is None:
            raise CliError(f"--aggregator {rule} needs {flag}")
    if args.attack is not None and args.attackers is None:
        raise CliError(f"--attack {args.attack} needs --attackers FRACTION")
    if args.attackers is not None and args.attack is None:
        raise CliError("--attackers applies with --attack only")


def _defaults(factory) -> dict:
    """{parameter: default} of a rule's or an attack's factory."""
    return {p.name: p.default for p in inspect.signature(factory).parameters.values()
            if p.default is not p.empty}


def robustness(args, num_nodes: int) -> tuple[robust.Aggregator | None,
                                              attacks_lib.Attack | None, dict]:
    """The run's aggregator and attack (None when not chosen) and a JSON-safe record of both,
    {"aggregator": {"name", every parameter...} | None, "attack": {"name", every parameter...,
    "attackers": their number} | None}; krum's default f is the number of attackers, drawn
    from --seed, when there are any.

    Raises:
      CliError: the `RobustnessError` or `AttackError` of a factory.
    """
    record: dict = {"aggregator": None, "attack": None}
    aggregator = attack = None
    try:
        if args.attack is not None:
            params = {"fraction": args.attackers}
            if args.attack in ("sign_flip", "scaled") and args.attack_scale is not None:
                params["scale"] = args.attack_scale
            if args.attack == "gaussian" and args.attack_std is not None:
                params["std"] = args.attack_std
            attack = attacks_lib.ATTACKS[args.attack](**params)
            count = int(attacks_lib.attackers(args.attackers, num_nodes, args.seed).sum())
            record["attack"] = {"name": args.attack, **_defaults(attacks_lib.ATTACKS[
                args.attack]), **params, "attackers": count}
        if args.aggregator is not None:
            byzantine = args.byzantine
            if byzantine is None:
                byzantine = record["attack"]["attackers"] if attack is not None else 1
            params = {"trimmed_mean": {"trim": 0.1 if args.trim is None else args.trim},
                      "krum": {"byzantine": byzantine}, "multi_krum": {"byzantine": byzantine},
                      "norm_bound": {"max_norm": args.max_norm},
                      "centered_clip": {"tau": args.tau}}.get(args.aggregator, {})
            aggregator = robust.AGGREGATORS[args.aggregator](**params)
            record["aggregator"] = {"name": args.aggregator,
                                    **_defaults(robust.AGGREGATORS[args.aggregator]), **params}
    except (RobustnessError, AttackError) as e:
        raise CliError(str(e)) from None
    return aggregator, attack, record


def systems(args, num_nodes: int) -> Systems:
    """The run's `Systems` from the systems options (`Systems()` when none is given); churn
    and speeds are drawn per node from --seed."""
    join, leave = 0, None
    if args.join_by is not None or args.stay is not None:
        join, leave = systems_lib.churn(num_nodes, join_by=args.join_by or 0, stay=args.stay,
                                        seed=args.seed)
    speed = 1.0
    if args.speed_spread:
        speed = systems_lib.lognormal_speeds(num_nodes, args.speed_spread, seed=args.seed)
    work = (0.0, 1.0) if args.straggler_work is None else tuple(args.straggler_work)
    return Systems(
        sampling=args.sampling, sample_rate=args.sample_rate, stragglers=args.stragglers,
        straggler_work=work, straggler_unit=args.straggler_unit or "step",
        straggler_policy=args.straggler_policy, dropout=args.dropout, join=join, leave=leave,
        period=args.period, uptime=1.0 if args.uptime is None else args.uptime, speed=speed,
        bandwidth=math.inf if args.bandwidth is None else args.bandwidth,
        deadline=args.deadline, capacity=args.capacity,
    )


def federation(args, num_nodes: int) -> Federation:
    """The run's `Federation`; `num_nodes` sizes the per-node systems and attackers draws."""
    aggregator, attack, _ = robustness(args, num_nodes)
    return Federation(
        rounds=args.rounds, cohort_size=args.cohort_size, local_epochs=args.local_epochs,
        batch_size=args.batch_size, finetune_steps=args.finetune_steps, seed=args.seed,
        rounds_per_sync=max(1, min(10, args.rounds // 10 or 1)),
        systems=systems(args, num_nodes), aggregator=aggregator, attack=attack,
        privacy=privacy(args), secure_aggregation=secure_aggregation(args),
        devices=args.devices, eval_every=getattr(args, "eval_every", 0),
    )


def recorded(fed: Federation, record: dict) -> Federation:
    """`fed` as results.json records it: the aggregator and attack (which hold functions) as
    their JSON-safe `robustness` record."""
    return fed._replace(aggregator=record["aggregator"], attack=record["attack"])


def check_systems(fed: Federation, data: FederatedData,
                  algorithms: list[algos.Algorithm]) -> None:
    """The systems model, the robust rule and the attack against the data and every
    algorithm, before anything trains: each algorithm's `Engine` checks the options, that
    some node can report (a node's upload size, hence the deadline, depends on the algorithm)
    and, planning every round, that some node reports in some round and that a Poisson cohort
    fits its slots; that the rule suits the cohort (Krum needs more than 2f + 2 nodes), that
    a label attack has labels to flip, and that the privacy setting can be met (a target ε
    in reach, uploads that can be noised).

    Raises:
      CliError: the `SystemsError`'s, `RobustnessError`'s, `AttackError`'s or
        `PrivacyError`'s message
        (prefixed by the algorithm when it is not the first one's).
    """
    if (fed.systems.is_neutral and fed.aggregator is None and fed.attack is None
            and fed.privacy is None and fed.secure_aggregation is None):
        return
    for i, algo in enumerate(algorithms):
        try:
            Engine(algo, data, fed)
        except (SystemsError, RobustnessError, AttackError, PrivacyError, SecAggError) as e:
            named = i and not str(e).startswith(f"{algo.name} ")
            raise CliError(f"{algo.name}: {e}" if named else str(e)) from None


def systems_line(name: str, history: dict) -> str | None:
    """One line on an algorithm's participation: means per round, the share of the assigned
    work done (over the rounds that assigned any) and the simulated time."""
    rounds = len(history.get("train_loss", ()))
    if not rounds or "sampled" not in history:
        return None
    mean = lambda key: float(np.mean(history[key]))
    assigned = (np.asarray(history["participants"]) + np.asarray(history["dropped"])) > 0
    work = (f"{100 * float(np.mean(np.asarray(history['work'])[assigned])):.0f}% of the "
            "assigned work done" if assigned.any() else "no work assigned")
    return (f"{name}: per round {mean('sampled'):.1f} sampled, {mean('participants'):.1f} "
            f"reported, {mean('dropped'):.1f} dropped, {mean('stragglers'):.1f} stragglers, "
            f"{work}; simulated time {float(history['time'][-1]):.6g} "
            f"({mean('round_time'):.4g} per round)")


def robustness_line(record: dict) -> str | None:
    """One line on the rule and the attack of a run (None when it has neither)."""
    if record["aggregator"] is None and record["attack"] is None:
        return None
    show = lambda r, skip=(): r["name"] + "".join(
        f", {k} {v:g}" for k, v in r.items() if k not in ("name", *skip) and v is not None)
    rule = "weighted mean" if record["aggregator"] is None else show(record["aggregator"])
    attack = record["attack"]
    lie = ("no attack" if attack is None else
           f"{show(attack, ('fraction', 'attackers'))} by {attack['attackers']} node(s) "
           f"({100 * attack['fraction']:.0f}%)")
    return f"aggregator {rule}; {lie}"
