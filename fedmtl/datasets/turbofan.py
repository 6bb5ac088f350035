"""NASA C-MAPSS turbofan engines: remaining-useful-life regression, one node per factory.

Two protocols:
  * `turbofan()`: the report's protocol. FD001 + FD003 train and test trajectories pooled
    (400 engines), one example per cycle, 16 standardized features, uncapped RUL; 80 factories
    of 4 engines are the nodes, 80 engines are held out for a maintenance replay.
  * `turbofan_windows()`: the usual deep-learning benchmark (Li et al. 2018): windows of 30
    cycles of 14 sensors, RUL capped at 125, test = last window of each official test engine.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

import numpy as np

from fedmtl.data import FederatedData
from fedmtl.datasets import _files

SUBSETS = ("FD001", "FD002", "FD003", "FD004")
# The 14 sensors that vary in FD001/FD003 (the other 7 are constant or nearly so).
SENSORS = (2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21)
SENSOR_COLUMNS = tuple(4 + s for s in SENSORS)  # 0-based: unit, cycle, 3 settings, sensor 1..21
REPORT_COLUMNS = (2, 3) + SENSOR_COLUMNS  # operational settings 1-2, then the 14 sensors
REPORT_FEATURES = ("setting_1", "setting_2") + tuple(f"sensor_{s}" for s in SENSORS)
WINDOW_FEATURES = tuple(f"sensor_{s}" for s in SENSORS)


@dataclasses.dataclass(frozen=True, eq=False)
class Engine:
    """One engine trajectory of the report protocol.

    Attributes:
      name: "FD001-train-u017": subset, source file, unit number.
      x: [T, 16] float32 standardized features, one row per cycle 1..T.
      rul: [T] float32 true remaining useful life (cycles) at each row.
      failed: True if the trajectory runs to failure (train files); False if truncated (test
        files, whose last row has RUL = the official RUL_FD00x value).
    """

    name: str
    x: np.ndarray
    rul: np.ndarray
    failed: bool


@dataclasses.dataclass(frozen=True, eq=False)
class TurbofanStudy:
    """The report protocol's data.

    Attributes:
      data: regression FederatedData, nodes "factory00".., features [16], y = RUL [float32].
      holdout: engines in no factory (for a maintenance-strategy replay), standardized alike.
      factory_engines: engine names per factory; the last `test_engines_per_factory` of each
        form the node's test split, the others its train split.
      test_engines_per_factory: see above.
      feature_mean, feature_std: [16] float64 standardization fitted on the factories' train
        engines (raw = x * std + mean).
      feature_names: the 16 feature names.
      engines: every one of the 400 engines by name (factories' and held-out).
    """

    data: FederatedData
    holdout: tuple[Engine, ...]
    factory_engines: tuple[tuple[str, ...], ...]
    test_engines_per_factory: int
    feature_mean: np.ndarray
    feature_std: np.ndarray
    feature_names: tuple[str, ...]
    engines: Mapping[str, Engine]


# ----- raw files -----


def _parse_table(data: bytes) -> np.ndarray:
    # str.split handles the two trailing spaces per line; ~0.2 s for the largest FD001/3 file.
    a = np.array(data.split(), dtype=np.float64)
    return _files.read_only(a=a.reshape(-1, 26))["a"]


def _parse_rul(data: bytes) -> np.ndarray:
    return _files.read_only(a=np.array(data.split(), dtype=np.float64))["a"]


def _check_subset(subset: str) -> None:
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")


def load_raw(subset: str, data_dir=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three verified files of one subset, parsed (cached; read-only arrays).

    Returns:
      train [R, 26], test [R', 26] float64 (unit, cycle, 3 settings, 21 sensors) and rul [U']
      float64 (true RUL after the last cycle of each test unit).
    """
    _check_subset(subset)
    train = _files.load("cmapss", f"train_{subset}.txt.gz", _parse_table, data_dir)
    test = _files.load("cmapss", f"test_{subset}.txt.gz", _parse_table, data_dir)
    rul = _files.load("cmapss", f"RUL_{subset}.txt.gz", _parse_rul, data_dir)
    return train, test, rul


def _units(table: np.ndarray) -> list[np.ndarray]:
    """Rows of each unit, in unit order (units are contiguous in the files)."""
    units = table[:, 0].astype(np.int64)
    bounds = np.flatnonzero(np.diff(units)) + 1
    return np.split(table, bounds)


def _engines(subset: str, data_dir) -> list[tuple[str, np.ndarray, np.ndarray, bool]]:
    """(name, rows [T, 26], rul [T], failed) for every train then test unit of a subset."""
    train, test, rul = load_raw(subset, data_dir)
    out = []
    for rows in _units(train):
        cycles = rows[:, 1]
        out.append((f"{subset}-train-u{int(rows[0, 0]):03d}", rows, cycles[-1] - cycles, True))
    test_units = _units(test)
    if len(test_units) != len(rul):
        raise ValueError(f"{subset}: {len(test_units)} test units but {len(rul)} RUL values")
    for rows, last_rul in zip(test_units, rul, strict=True):
        cycles = rows[:, 1]
        # A truncated trajectory: RUL at its last row is the official value, +1 per earlier cycle.
        out.append((f"{subset}-test-u{int(rows[0, 0]):03d}", rows, last_rul + cycles[-1] - cycles,
                    False))
    return out


# ----- report protocol -----


def turbofan(
    protocol: str = "report",
    *,
    num_factories: int = 80,
    engines_per_factory: int = 4,
    test_engines_per_factory: int = 1,
    seed: int = 0,
    data_dir=None,
) -> TurbofanStudy:
    """The report's protocol: 400 FD001+FD003 engines, factories as nodes, engines held out.

    The 400 engines (100 train + 100 test trajectories of each of FD001 and FD003) are shuffled
    with `seed`; the first num_factories * engines_per_factory go to the factories in order, the
    rest are held out. Each factory's node is split by engine: its last
    `test_engines_per_factory` engines are its test split (by default 3 train + 1 test engine).
    One example per cycle: 16 features (operational settings 1-2 and sensors 2, 3, 4, 7, 8, 9,
    11, 12, 13, 14, 15, 17, 20, 21), standardized with the mean/std of the factories' train
    rows; target = uncapped RUL in cycles (float32). FD001/FD003 are shipped with the package.

    Args:
      protocol: "report" (the only one; see `turbofan_windows` for the window benchmark).
      num_factories: N nodes.
      engines_per_factory: engines per factory.
      test_engines_per_factory: engines per factory in the node's test split (0 for none).
      seed: seed of the engine shuffle.
      data_dir: data folder overriding `$FEDMTL_DATA` (only read if a shipped file is
        missing); when given it must be an existing folder (`DataFileError`).

    Returns:
      TurbofanStudy with the FederatedData (nodes "factory00", ...), the held-out engines and
      the engine names of each factory.
    """
    if protocol != "report":
        raise ValueError(
            f"protocol must be 'report', got {protocol!r} (the window benchmark is "
            f"turbofan_windows())"
        )
    raw = _engines("FD001", data_dir) + _engines("FD003", data_dir)
    if num_factories < 1 or engines_per_factory < 1:
        raise ValueError(
            f"num_factories and engines_per_factory must be >= 1, got {num_factories} and "
            f"{engines_per_factory}"
        )
    if num_factories * engines_per_factory > len(raw):
        raise ValueError(
            f"num_factories * engines_per_factory = {num_factories * engines_per_factory} "
            f"exceeds the {len(raw)} engines"
        )
    if not 0 <= test_engines_per_factory < engines_per_factory:
        raise ValueError(
            f"test_engines_per_factory must be in [0, engines_per_factory={engines_per_factory}),"
            f" got {test_engines_per_factory}"
        )
    perm = np.random.default_rng(seed).permutation(len(raw))
    groups = perm[: num_factories * engines_per_factory].reshape(num_factories, -1)
    n_train = engines_per_factory - test_engines_per_factory

    # Standardization sees only the factories' train engines: no test or held-out leakage.
    fit = np.concatenate([raw[i][1][:, REPORT_COLUMNS] for i in groups[:, :n_train].ravel()])
    mean, std = fit.mean(axis=0), fit.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)

    engines = {}
    for name, rows, rul, failed in raw:
        x = ((rows[:, REPORT_COLUMNS] - mean) / std).astype(np.float32)
        engines[name] = Engine(name, x, rul.astype(np.float32), failed)
    names = [e[0] for e in raw]

    def stack(idx):
        return (np.concatenate([engines[names[i]].x for i in idx]),
                np.concatenate([engines[names[i]].rul for i in idx]))

    width = max(2, len(str(num_factories - 1)))
    train = [stack(g[:n_train]) for g in groups]
    test = [stack(g[n_train:]) if len(g) > n_train else (np.zeros((0, 16)), np.zeros(0))
            for g in groups]
    data = FederatedData.from_splits(
        [t[0] for t in train], [t[1] for t in train], [t[0] for t in test], [t[1] for t in test],
        task="regression", names=[f"factory{k:0{width}d}" for k in range(num_factories)],
    )
    return TurbofanStudy(
        data=data,
        holdout=tuple(engines[names[i]] for i in perm[num_factories * engines_per_factory:]),
        factory_engines=tuple(tuple(names[i] for i in g) for g in groups),
        test_engines_per_factory=test_engines_per_factory,
        feature_mean=mean,
        feature_std=std,
        feature_names=REPORT_FEATURES,
        engines=types.MappingProxyType(engines),
    )


# ----- window benchmark protocol -----


def turbofan_windows(
    subset: str = "FD001",
    *,
    window: int = 30,
    max_rul: float = 125.0,
    num_nodes: int = 10,
    engines_per_node: int | None = None,
    seed: int = 0,
    data_dir=None,
) -> FederatedData:
    """The standard window benchmark of one subset, train engines grouped into nodes.

    The 14 sensors (2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21) are min-max scaled to
    [-1, 1] with the min/max of the whole train file (Li et al. 2018). Train examples: every
    sliding window of `window` cycles of each train engine, target = RUL at the window's last
    cycle capped at `max_rul`. Train engines are shuffled with `seed` and dealt into nodes.
    Test examples: the last window of each official test engine, assigned round-robin (test
    engine i goes to node i % num_nodes), target = min(RUL_FD00x[i], max_rul). Trajectories
    shorter than `window` are left-padded by repeating their first row.

    Args:
      subset: "FD001" or "FD003" (shipped) or "FD002"/"FD004" (from the data folder).
      window: cycles per example.
      max_rul: the RUL cap (piecewise-linear target).
      num_nodes: N nodes.
      engines_per_node: train engines per node; None deals all train engines out as evenly as
        possible (FD001: 10 nodes x 10 engines). Otherwise only the first
        num_nodes * engines_per_node shuffled engines are used.
      seed: seed of the train-engine shuffle.
      data_dir: data folder overriding `$FEDMTL_DATA`; when given it must be an existing
        folder (`DataFileError`).

    Returns:
      Regression FederatedData: nodes "node00".., x [window, 14] float32, y = capped RUL.
    """
    _check_subset(subset)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if max_rul <= 0:
        raise ValueError(f"max_rul must be > 0, got {max_rul}")
    train, test, rul = load_raw(subset, data_dir)
    train_units, test_units = _units(train), _units(test)
    if num_nodes < 1 or num_nodes > len(train_units):
        raise ValueError(f"num_nodes must be in [1, {len(train_units)}], got {num_nodes}")
    if engines_per_node is not None and not (
        engines_per_node >= 1 and num_nodes * engines_per_node <= len(train_units)
    ):
        raise ValueError(
            f"engines_per_node must be >= 1 with num_nodes * engines_per_node <= "
            f"{len(train_units)} train engines, got {engines_per_node}"
        )
    lo = train[:, SENSOR_COLUMNS].min(axis=0)
    span = train[:, SENSOR_COLUMNS].max(axis=0) - lo
    span = np.where(span > 0, span, 1.0)
    scale = lambda rows: (2.0 * (rows[:, SENSOR_COLUMNS] - lo) / span - 1.0).astype(np.float32)

    perm = np.random.default_rng(seed).permutation(len(train_units))
    if engines_per_node is not None:
        groups = perm[: num_nodes * engines_per_node].reshape(num_nodes, engines_per_node)
    else:
        groups = np.array_split(perm, num_nodes)
    train_xs, train_ys = [], []
    for g in groups:
        xs, ys = zip(*(_windows(scale(train_units[i]), window, max_rul) for i in g), strict=True)
        train_xs.append(np.concatenate(xs))
        train_ys.append(np.concatenate(ys))

    test_xs = [[] for _ in range(num_nodes)]
    test_ys = [[] for _ in range(num_nodes)]
    for i, rows in enumerate(test_units):
        test_xs[i % num_nodes].append(_pad(scale(rows), window)[-window:])
        test_ys[i % num_nodes].append(min(float(rul[i]), max_rul))
    empty = np.zeros((0, window, len(SENSORS)), np.float32)
    return FederatedData.from_splits(
        train_xs, train_ys,
        [np.stack(x) if x else empty for x in test_xs],
        [np.asarray(y, np.float32) for y in test_ys],
        task="regression",
        names=[f"node{k:0{max(2, len(str(num_nodes - 1)))}d}" for k in range(num_nodes)],
    )


def _pad(x: np.ndarray, window: int) -> np.ndarray:
    """Left-pads [T, F] to at least `window` rows by repeating the first row."""
    if len(x) >= window:
        return x
    return np.concatenate([np.repeat(x[:1], window - len(x), axis=0), x])


def _windows(x: np.ndarray, window: int, max_rul: float):
    """All windows [T-window+1, window, F] of one run-to-failure engine and their capped RUL."""
    x = _pad(x, window)
    w = np.lib.stride_tricks.sliding_window_view(x, window, axis=0)  # [W, F, window]
    w = np.ascontiguousarray(w.transpose(0, 2, 1))
    rul = np.arange(len(w) - 1, -1, -1, dtype=np.float32)  # RUL at each window's last cycle
    return w, np.minimum(rul, max_rul)


# ----- metrics -----


def rmse(pred, true) -> float:
    """Root-mean-square error of RUL predictions [n] vs truth [n]."""
    d = np.asarray(pred, np.float64) - np.asarray(true, np.float64)
    return float(np.sqrt(np.mean(d**2)))


def phm08_score(pred, true) -> float:
    """PHM08 challenge score: sum of exp(-d/13) - 1 (d < 0, early) and exp(d/10) - 1 (d >= 0,
    late), d = pred - true; late predictions cost more. Lower is better, 0 is perfect."""
    d = np.asarray(pred, np.float64) - np.asarray(true, np.float64)
    return float(np.sum(np.where(d < 0, np.expm1(-d / 13.0), np.expm1(d / 10.0))))
