"""SensIT Vehicle (Duarte & Hu 2004): 23 sensor nodes, AAV vs DW (MOCHA's "Vehicle Sensor")."""

from __future__ import annotations

import numpy as np

from fedmtl.data import FederatedData
from fedmtl.datasets import _files

FILE = "sensit_vehicle_features.npz"
CLASSES = ("AAV", "DW")  # label 0 = assault amphibian vehicle, 1 = dragon wagon
# Sensor node ids, i.e. the 23 MOCHA tasks, in node order.
NODES = (1, 2, 3, 4, 5, 6, 41, 42, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 58, 59, 60, 61)


def _parse(data: bytes) -> dict[str, np.ndarray]:
    with _files.npz(data) as z:
        return _files.read_only(x=z["X"], y=z["y"].astype(np.int32), node=z["node"])


def vehicle(*, test_fraction: float = 0.25, seed: int = 0, data_dir=None) -> FederatedData:
    """Binary vehicle classification, one node per sensor (MOCHA protocol).

    Features: 50 acoustic then 50 seismic features per sample (as distributed, each 50-vector
    max-normalized to 1). Each node's samples are split at random (seeded) into train/test;
    then each node is standardized with the mean/std of its own train part, applied to both
    parts. Read from the data folder only (`vehicle_sensor/sensit_vehicle_features.npz`).

    Args:
      test_fraction: share of each node's samples in its test split.
      seed: seed of the per-node splits.
      data_dir: data folder overriding `$FEDMTL_DATA`; when given it must be an existing
        folder (`DataFileError`).

    Returns:
      Classification FederatedData: 23 nodes "node01".."node61" (sensor ids), x [100]
      float32, y int32 with 0 = AAV and 1 = DW, 49264 samples in all.
    """
    _files.check_fraction(test_fraction)
    raw = _files.load("vehicle_sensor", FILE, _parse, data_dir)
    rng = np.random.default_rng(seed)
    parts = [[], [], [], []]
    for node in NODES:
        rows = np.flatnonzero(raw["node"] == node)
        tr, te = _files.node_split(len(rows), test_fraction, rng)
        xtr, xte = _files.standardize(raw["x"][rows[tr]], raw["x"][rows[te]])
        for p, a in zip(parts, (xtr, raw["y"][rows[tr]], xte, raw["y"][rows[te]]), strict=True):
            p.append(a)
    return FederatedData.from_splits(
        *parts, task="classification", num_classes=2, names=[f"node{n:02d}" for n in NODES]
    )
