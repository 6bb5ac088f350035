"""The command line's privacy options: differential privacy (central or local, a target ε or a
noise multiplier, the clip, adaptive clipping, the accountant), checked before data loads,
and the line that states the guarantee after a run."""

from __future__ import annotations

import argparse
import math

from fedmtl import accounting, secagg
from fedmtl import privacy as privacy_lib
from fedmtl.cli_common import CliError, bounded
from fedmtl.privacy import Privacy, PrivacyError

PRIVACY_HELP = """\
differential privacy of what nodes upload (docs/privacy.md): DP-FedAvg's clipping and
Gaussian noise, added by the server to the sum (central) or by each node (local), with ε
accounted by Google's dp-accounting. Without --dp nothing is noised."""

# option (argparse dest) -> flag, for the "needs --dp" check
DP_OPTIONS = {"epsilon": "--epsilon", "noise_multiplier": "--noise-multiplier",
              "delta": "--delta", "clip": "--clip", "per_layer_clip": "--per-layer-clip",
              "adaptive_clip": "--adaptive-clip", "weight_cap": "--weight-cap",
              "accountant": "--accountant"}


SECAGG_OPTIONS = {"secagg_neighbours": "--secagg-neighbours", "secagg_bits": "--secagg-bits",
                  "secagg_clip": "--secagg-clip"}


def add_privacy_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("privacy", PRIVACY_HELP)
    g.add_argument("--dp", choices=privacy_lib.WHERE, default=None,
                   help="central: the server clips every upload and noises the sum "
                   "(DP-FedAvg); local: every node clips and noises its own upload "
                   "(default: no DP)")
    g.add_argument("--epsilon", type=bounded(float, above=0), default=None, metavar="E",
                   help="target ε after --rounds rounds: the noise multiplier is calibrated "
                   "to meet it (give this or --noise-multiplier)")
    g.add_argument("--noise-multiplier", type=bounded(float, minimum=0), default=None,
                   metavar="Z", help="noise standard deviation in units of the clip norm "
                   "(give this or --epsilon)")
    g.add_argument("--delta", type=bounded(float, above=0, below=1), default=None,
                   metavar="D", help="δ at which ε is stated, in (0, 1) (default 1e-5)")
    g.add_argument("--clip", type=bounded(float, above=0), default=None, metavar="S",
                   help="L2 bound of a node's whole upload (default 1; the starting bound "
                   "with --adaptive-clip)")
    g.add_argument("--per-layer-clip", action="store_true", default=None,
                   help="clip each of the upload's L arrays to S/√L instead of the whole")
    g.add_argument("--adaptive-clip", type=bounded(float, above=0, below=1), default=None,
                   metavar="QUANTILE", help="central DP: move the clip norm towards this "
                   "quantile of the update norms each round (Andrew et al. 2021)")
    g.add_argument("--weight-cap", type=bounded(float, above=0), default=None, metavar="W",
                   help="central DP: weigh each node by min(examples, W) (default: every "
                   "node weighs 1)")
    g.add_argument("--accountant", choices=accounting.ACCOUNTANTS, default=None,
                   help="dp-accounting's RDP or PLD accountant for the calibration and the "
                   "final ε (default rdp; the per-round ε in the history is RDP's)")
    g.add_argument("--secure-aggregation", action="store_true",
                   help="the server learns only the sum of the uploads: pairwise masks "
                   "(SecAgg; SecAgg+ with --secagg-neighbours), simulated faithfully")
    g.add_argument("--secagg-neighbours", type=bounded(int, minimum=1), default=None,
                   metavar="K", help="SecAgg+: each node masks with K neighbours (default: "
                   "every other node of the cohort, SecAgg's complete graph)")
    g.add_argument("--secagg-bits", type=bounded(int, minimum=8, maximum=32), default=None,
                   metavar="B", help="sums modulo 2^B (default 32)")
    g.add_argument("--secagg-clip", type=bounded(float, above=0), default=None, metavar="S",
                   help="each upload is clipped to L2 norm S before it is quantized "
                   "(default 10)")


def check_privacy_options(args) -> None:
    """Privacy options without --dp, or with both or neither of --epsilon and
    --noise-multiplier (before data loads).

    Raises:
      CliError: naming the options.
    """
    secure = [flag for dest, flag in SECAGG_OPTIONS.items() if getattr(args, dest) is not None]
    if secure and not args.secure_aggregation:
        raise CliError(f"{', '.join(secure)} need(s) --secure-aggregation")
    if args.secure_aggregation and args.dp == "central":
        raise CliError("--secure-aggregation hides the sum's parts from the server, which "
                       "central DP needs to clip and noise; use --dp local with it")
    if args.dp is None:
        given = [flag for dest, flag in DP_OPTIONS.items() if getattr(args, dest) is not None]
        if given:
            raise CliError(f"{', '.join(given)} need(s) --dp central or --dp local")
        return
    if (args.epsilon is None) == (args.noise_multiplier is None):
        raise CliError(f"--dp {args.dp} needs exactly one of --epsilon E (a target) and "
                       "--noise-multiplier Z")
    if args.dp == "local":
        for dest in ("adaptive_clip", "weight_cap"):
            if getattr(args, dest) is not None:
                raise CliError(f"{DP_OPTIONS[dest]} applies to --dp central only")


def privacy(args) -> Privacy | None:
    """The run's `Privacy` (None without --dp).

    Raises:
      CliError: the `PrivacyError`'s message.
    """
    if args.dp is None:
        return None
    common = {"clip": 1.0 if args.clip is None else args.clip,
              "noise_multiplier": args.noise_multiplier, "epsilon": args.epsilon,
              "delta": 1e-5 if args.delta is None else args.delta,
              "per_layer": bool(args.per_layer_clip), "accountant": args.accountant or "rdp"}
    try:
        if args.dp == "local":
            return privacy_lib.local(**common)
        return privacy_lib.central(**common, weight_cap=args.weight_cap,
                                   target_quantile=args.adaptive_clip)
    except PrivacyError as e:
        raise CliError(str(e)) from None


def secure_aggregation(args) -> secagg.SecureAggregation | None:
    """The run's secure aggregation (None without --secure-aggregation)."""
    if not args.secure_aggregation:
        return None
    return secagg.SecureAggregation(
        neighbours=args.secagg_neighbours, bits=args.secagg_bits or 32,
        clip=10.0 if args.secagg_clip is None else args.secagg_clip)


def privacy_line(report: dict) -> str | None:
    """One line stating a run's guarantee (None without privacy)."""
    if not report:
        return None
    eps = report["epsilon"]
    shown = "∞ (no noise)" if math.isinf(eps) else f"{eps:.4g}"
    if report.get("sampling") == "nothing uploaded":
        return f"ε = 0: nothing leaves the nodes (δ = {report['delta']:g})"
    adaptive = ", adaptive clip" if report["adaptive"] else ""
    return (f"{report['where']} DP, noise multiplier {report['noise_multiplier']:.4g}, clip "
            f"{report['clip']:g}{adaptive}: ε = {shown} at δ = {report['delta']:g} after "
            f"{report['rounds']} rounds ({report['accountant']}; {report['sampling']})")


def print_privacy(results, console) -> None:
    """Each result's privacy guarantee, one line each (none without privacy)."""
    for result in results:
        line = privacy_line(result.privacy)
        if line:
            console.print(f"[bold]privacy[/]: {result.name}: {line}")
