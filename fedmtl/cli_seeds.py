"""`fedmtl run/compare --seeds S`: the comparison over S training seeds (--seed, ..., --seed +
S - 1) on one data split, each algorithm's S runs as one vectorized program; a results
folder per seed and the mean ± standard error over them."""

from __future__ import annotations

import dataclasses
import sys

from rich.console import Console

from fedmtl import plots
from fedmtl.cli_common import CliError, finish
from fedmtl.cli_federation import recorded
from fedmtl.cli_privacy import print_privacy
from fedmtl.experiment import compare_seeds
from fedmtl.output import SeedsFolder
from fedmtl.report import print_seeds_report


def seeds_of(args) -> list[int] | None:
    """The training seeds --seeds asks for (None: one plain run, --seeds absent or 1).

    Raises:
      CliError: --checkpoint-every or --resume with S > 1 (before anything is loaded).
    """
    count = getattr(args, "seeds", None) or 1
    if count == 1:
        return None
    for flag, value in (("--checkpoint-every", args.checkpoint_every),
                        ("--resume", args.resume)):
        if value is not None:
            raise CliError(f"{flag} is not supported with --seeds yet; drop one of them")
    return [args.seed + i for i in range(count)]


def train_seeds(args, console: Console, shown, seeds: list[int], data, algorithms, fed,
                record: dict, config: dict, config_toml: str) -> int:
    """Trains and reports the sweep; writes OUT/seed-<s>/ per seed and OUT/config.toml,
    run.json and seeds.json (`SeedsFolder`). `shown` is the progress display (`cli.display`);
    each bar's metrics are means over the seeds. Returns the exit status."""
    folder = SeedsFolder.open(args.out, seeds, config, sys.argv[1:], config_toml=config_toml,
                              tensorboard=args.tensorboard)
    # results.json records the federation; its aggregator and attack hold functions
    as_recorded = lambda sweep: dataclasses.replace(sweep, runs=tuple(
        dataclasses.replace(c, federation=recorded(c.federation, record)) for c in sweep.runs))
    try:
        with shown:
            running = []

            def on_start(name):
                running.append(name)
                shown.start(name)

            def on_done(so_far):
                name, first = running[-1], so_far.runs[0]
                found = next(x for x in (*first.results, *first.failures) if x.name == name)
                shown.done(name, found in first.failures, found.seconds * len(seeds))
                folder.update(as_recorded(so_far))

            sweep = compare_seeds(algorithms, data, fed, seeds, shown.update,
                                  on_start=on_start, on_done=on_done)
    except BaseException:
        folder.close(status="interrupted")
        raise
    paths = folder.close(as_recorded(sweep))
    if args.plots:
        for sub in folder.folders:
            paths += plots.plot_results(sub.path)
    if sweep.runs[0].results:
        print_seeds_report(sweep, console)
        print_privacy(sweep.runs[0].results, console)  # the same guarantee for every seed
    return finish(paths, sweep.failures, len(algorithms), args.out, console)
