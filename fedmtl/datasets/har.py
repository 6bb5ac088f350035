"""UCI HAR raw inertial windows: 30 subjects as nodes, activity or sitting-vs-rest."""

from __future__ import annotations

import numpy as np

from fedmtl.data import FederatedData
from fedmtl.datasets import _files

FILE = "har_inertial.npz"
WINDOW = 128  # samples per window: 2.56 s at 50 Hz, consecutive windows overlap by half
CHANNELS = (
    "body_acc_x", "body_acc_y", "body_acc_z",
    "body_gyro_x", "body_gyro_y", "body_gyro_z",
    "total_acc_x", "total_acc_y", "total_acc_z",
)
# Official activity ids 1..6 become labels 0..5 in this order.
ACTIVITIES = ("WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING")
STATS = ("mean", "std", "min", "max", "median", "iqr")
STAT_FEATURES = tuple(f"{c}_{s}" for c in CHANNELS for s in STATS)  # 54, channel-major
NUM_SUBJECTS = 30


def _parse(data: bytes) -> dict[str, np.ndarray]:
    with _files.npz(data) as z:
        if tuple(z["channels"]) != CHANNELS:
            raise ValueError(f"{FILE}: unexpected channels {tuple(z['channels'])}")
        idx = z["window_start"][:, None] + np.arange(WINDOW)
        windows = np.ascontiguousarray(z["signals"][:, idx].transpose(1, 2, 0))  # [10299, 128, 9]
        y, subject = z["y"].astype(np.int32) - 1, z["subject"].astype(np.int32)
    return _files.read_only(raw=windows, stats=_stats(windows), y=y, subject=subject)


def _stats(w: np.ndarray) -> np.ndarray:
    """[n, 128, 9] windows -> [n, 54]: per channel mean, std, min, max, median, IQR."""
    q25, q50, q75 = np.percentile(w, [25, 50, 75], axis=1)
    s = np.stack([w.mean(1), w.std(1), w.min(1), w.max(1), q50, q75 - q25], axis=-1)  # [n, 9, 6]
    return s.reshape(len(w), -1).astype(np.float32)


def har(
    task: str = "activity",
    features: str = "stats",
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    data_dir=None,
) -> FederatedData:
    """Human activity recognition, one node per subject (MOCHA uses one task per subject).

    Each subject's windows are split at random (seeded) into train/test, ignoring the official
    subject-wise split. Windows overlap by 50%, so a test window shares half its samples with
    neighbouring train windows (as in MOCHA's and PFLlib's random splits). Read from the data
    folder only (`uci_har/har_inertial.npz`; HAR's terms forbid commercial use).

    Args:
      task: "activity": 6 classes, 0..5 = WALKING, WALKING_UPSTAIRS, WALKING_DOWNSTAIRS,
        SITTING, STANDING, LAYING; "sitting": binary, 1 = SITTING, 0 = any other activity.
      features: "stats": [54] = for each of the 9 channels (`CHANNELS`) its mean, std, min,
        max, median and interquartile range over the window (`STAT_FEATURES`), standardized per
        node with its train part's mean/std; "raw": [128, 9] float32 windows (time, channel),
        not normalized (accelerations in g, gyro in rad/s).
      test_fraction: share of each subject's windows in its test split.
      seed: seed of the per-subject splits.
      data_dir: data folder overriding `$FEDMTL_DATA`; when given it must be an existing
        folder (`DataFileError`).

    Returns:
      Classification FederatedData with 30 nodes "subject01".."subject30", 10299 windows.
    """
    if task not in ("activity", "sitting"):
        raise ValueError(f"task must be 'activity' or 'sitting', got {task!r}")
    if features not in ("stats", "raw"):
        raise ValueError(f"features must be 'stats' or 'raw', got {features!r}")
    _files.check_fraction(test_fraction)
    raw = _files.load("uci_har", FILE, _parse, data_dir)
    x = raw[features]
    y = raw["y"] if task == "activity" else (raw["y"] == ACTIVITIES.index("SITTING"))
    y = y.astype(np.int32)
    rng = np.random.default_rng(seed)
    parts = [[], [], [], []]
    for s in range(1, NUM_SUBJECTS + 1):
        rows = np.flatnonzero(raw["subject"] == s)
        tr, te = _files.node_split(len(rows), test_fraction, rng)
        xtr, xte = x[rows[tr]], x[rows[te]]
        if features == "stats":
            xtr, xte = _files.standardize(xtr, xte)
        for p, a in zip(parts, (xtr, y[rows[tr]], xte, y[rows[te]]), strict=True):
            p.append(a)
    return FederatedData.from_splits(
        *parts, task="classification", num_classes=len(ACTIVITIES) if task == "activity" else 2,
        names=[f"subject{s:02d}" for s in range(1, NUM_SUBJECTS + 1)],
    )
