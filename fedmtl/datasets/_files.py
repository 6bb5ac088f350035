"""The data folder, sha256 verification of every file read, and shared per-node helpers.

Files are looked up in the package's shipped copies first (C-MAPSS FD001/FD003 only), then in the
data folder: `data_dir=` if given (it must then exist, even when the shipped copies suffice), else
`$FEDMTL_DATA`, else `~/.fedmtl/data` (which may be absent). A file is used only
if its sha256 matches the value published in the data set's README; parsed arrays are cached
per file version (path, mtime, size), so repeated loader calls parse once.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

ENV_VAR = "FEDMTL_DATA"
DEFAULT_DIR = "~/.fedmtl/data"
SHIPPED_DIR = Path(__file__).resolve().parent / "files"


class DataFileError(FileNotFoundError):
    """A data file is missing or its bytes are not the published ones.

    A subclass of FileNotFoundError: an altered file counts as "the expected file was not
    found". The message names the file, every path tried and where to obtain it.
    """


class Checksum(NamedTuple):
    """Expected sha256 of a file; for gzip files also of the decompressed content."""

    sha256: str
    raw_sha256: str | None = None


# From shared/data/<subdir>/README.md. For .gz files the decompressed sha256 is accepted too, so a
# user who gzips NASA's own text files (with any gzip settings) passes verification.
CHECKSUMS: dict[str, dict[str, Checksum]] = {
    "cmapss": {
        "RUL_FD001.txt.gz": Checksum(
            "831ec48d510ec1c5b542b8a3fcf3388b6c88bf95cc801d37cfd2edb104640017",
            "a19c8ec94931949d0485bdc35118206e9c81c4547b422efb9cf86f4ceddbceca",
        ),
        "RUL_FD002.txt.gz": Checksum(
            "fb307399996a4f7df62f64bb911895bb85b93a494bb358c508a67f64438120d5",
            "c851dd96a6ea6998d3c4a8f834d3c8013aa90e93a6ed950dc826ad0655b2906b",
        ),
        "RUL_FD003.txt.gz": Checksum(
            "dfc9bfef43e2077e5417a3fce36749213c30ac0c81af8e82e1270f3d203e23b5",
            "df1e0566306b174a2de41c67a3e7a51877889598b78643fc3e5685259091b7cb",
        ),
        "RUL_FD004.txt.gz": Checksum(
            "a6b71b82a8d8a1dc16c3ecaba53911fc6cd2aee0feef3581a8c32098292fba0e",
            "196b836b85a95ac7fdbbf29c5fdf1657382eafa445644d114ffaaf50dc2975e1",
        ),
        "test_FD001.txt.gz": Checksum(
            "9bc5ed28f8181a62938a025b56baf1f3a83bfa972906301e8220ed6c30b69518",
            "3cda7109ce17bafb5443f2ac926cfcf88154b941b8c4cf95eb55d1ddd6f52851",
        ),
        "test_FD002.txt.gz": Checksum(
            "b1c22f4c868b7f44dbbd1449a80996d3ba4f2d9c1819b10efb7f734f5d5e6422",
            "de7b5bf7e998a985c378488480528b7c02cff1406a46740def362dda8d9b4e02",
        ),
        "test_FD003.txt.gz": Checksum(
            "1e48323df040fa87cfaa988c48199bc6343e4a35ffdbaa2abdc5f0ea091c5ede",
            "299babd63c8d987cef079c4a425429f33b3a34797d803bbe2ad48c29dbd0d790",
        ),
        "test_FD004.txt.gz": Checksum(
            "025dc23b0de7841cb2b43c9f5f2d7835c105f4a033d6bee4073c227ce9d2f768",
            "1dc675fff0624bac10786927c6715b37d1297657137400d2b1a3138d777a3ba5",
        ),
        "train_FD001.txt.gz": Checksum(
            "d0ce25b14e892e2483809dd000ca1f8d7e318d1c9ac6a8055926f08265ace70a",
            "963b5e22825b34d8b21c69e1aeb4af3e647050eb672ee8834ba4b5d91d2de0f8",
        ),
        "train_FD002.txt.gz": Checksum(
            "8fb10cc9412a990ccb336c8bdcb2697f5e8cfd0d30404c40279c5b06d8ce6875",
            "dac6c4dbc4e7c1bdeb5747da3d313d05c395bb99801b44a002b26a2ba13d788f",
        ),
        "train_FD003.txt.gz": Checksum(
            "df3b1948a82eb3e0320116323920ba822206357d516bf3362315740bd079e8ea",
            "2abbe9968cc5e8eb091980f51b20f62bb4127336d3482cb52071d53bf23329e2",
        ),
        "train_FD004.txt.gz": Checksum(
            "73f72d44ca87a1b7ae539205a1605483537bc7c4bfa2c0af0b9d4782eabcfc49",
            "27ef6160b6a1dcb2613a88de9c239f763b223f02cdc41dc5cdedc5dc189b6218",
        ),
    },
    "uci_har": {
        "har_inertial.npz": Checksum(
            "f67762d835e6161f1daf6b252fe92bf9395010e4d3ed54b6ae53042c4e2dac4f"
        ),
    },
    "vehicle_sensor": {
        "sensit_vehicle_features.npz": Checksum(
            "3a3454cdcb0041549b88a0cb22f5ce46fe80dabed64e9306d4cc43cb2a31f6ac"
        ),
    },
}

# Shipped inside the package (NASA public release); everything else comes from the data folder.
SHIPPED = frozenset(
    ("cmapss", f"{kind}_{s}.txt.gz")
    for kind in ("train", "test", "RUL")
    for s in ("FD001", "FD003")
)

SOURCES = {
    "cmapss": (
        "NASA's Prognostics Data Repository, 'Turbofan Engine Degradation Simulation Data Set' "
        "(C-MAPSS, Saxena & Goebel 2008; "
        "https://www.nasa.gov/intelligent-systems-division/discovery-and-systems-health/pcoe/"
        "pcoe-data-set-repository/): gzip the text file of the same name"
    ),
    "uci_har": (
        "the fedmtl data bundle (uci_har/har_inertial.npz is rebuilt from the 'Inertial Signals' "
        "of the UCI HAR Dataset, https://archive.ics.uci.edu/dataset/240; see docs/datasets.md)"
    ),
    "vehicle_sensor": (
        "the fedmtl data bundle (vehicle_sensor/sensit_vehicle_features.npz is rebuilt from the "
        "SensIT Vehicle feature files of Duarte & Hu 2004, as in GitHub lucori/virtual commit "
        "b748b95, data/vehicle_sensor/; see docs/datasets.md)"
    ),
}


def data_dir() -> Path:
    """The data folder: `$FEDMTL_DATA` if set, else `~/.fedmtl/data`."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser()


def candidates(subdir: str, name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Paths tried for one file, in order: the shipped copy (if any), then the data folder."""
    folder = Path(root).expanduser() if root is not None else data_dir()
    paths = [SHIPPED_DIR / name] if (subdir, name) in SHIPPED else []
    return paths + [folder / subdir / name]


def check_root(root: str | os.PathLike) -> None:
    """Raises DataFileError naming `root` unless it is an existing folder."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "does not exist"
        raise DataFileError(
            f"data_dir {str(folder)!r} {why}: pass a folder holding cmapss/, uci_har/ or "
            f"vehicle_sensor/ (or no data_dir: then {ENV_VAR}, else {DEFAULT_DIR})"
        )


def check(path: Path, expected: Checksum) -> str | None:
    """Why `path` fails verification (a short reason), or None when it is good."""
    if not path.is_file():
        return "missing"
    data = path.read_bytes()
    return _mismatch(data, expected, path.name)


def load(subdir: str, name: str, parse: Callable[[bytes], object], root=None):
    """Verifies one file and returns `parse(content)`, cached per file version.

    Args:
      subdir, name: the file, e.g. ("cmapss", "train_FD001.txt.gz").
      parse: module-level function of the (decompressed, for .gz) bytes; its result is cached
        and shared, so it should return read-only arrays.
      root: the data folder overriding `data_dir()`.

    Raises:
      DataFileError: no candidate path holds the published bytes, or `root` is given but is
        not an existing folder (even when a shipped copy would do: the path is a mistake).
    """
    if root is not None:
        check_root(root)
    expected = CHECKSUMS[subdir][name]
    tried = []
    for path in candidates(subdir, name, root):
        try:
            st = path.stat()
        except OSError:
            tried.append((path, "missing"))
            continue
        try:
            return _load_cached(str(path), st.st_mtime_ns, st.st_size, expected, parse)
        except _Altered as e:
            tried.append((path, str(e)))
    raise DataFileError(_message(subdir, name, tried))


class _Altered(Exception):
    pass


@functools.lru_cache(maxsize=32)
def _load_cached(path: str, mtime_ns: int, size: int, expected: Checksum, parse):
    # mtime and size are in the key so that a file replaced on disk is re-verified.
    data = Path(path).read_bytes()
    why = _mismatch(data, expected, path)
    if why:
        raise _Altered(why)
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    return parse(data)


def _mismatch(data: bytes, expected: Checksum, name: str) -> str | None:
    got = hashlib.sha256(data).hexdigest()
    if got == expected.sha256:
        return None
    if expected.raw_sha256 and name.endswith(".gz"):
        try:
            if hashlib.sha256(gzip.decompress(data)).hexdigest() == expected.raw_sha256:
                return None
        except (OSError, EOFError, zlib.error):
            pass  # not a valid gzip stream: altered
    return f"altered (sha256 {got[:16]}..., expected {expected.sha256[:16]}...)"


def _message(subdir: str, name: str, tried: list[tuple[Path, str]]) -> str:
    where = "; ".join(f"{p} ({why})" for p, why in tried)
    return (
        f"data file {name!r} not found with its published sha256: looked for {where}. "
        f"Obtain it from {SOURCES[subdir]}, or set {ENV_VAR} to a folder holding "
        f"{subdir}/{name} (or pass data_dir=)."
    )


class FileStatus(NamedTuple):
    """One row of `verify()`: "subdir/name", the path found (or last tried), and the status."""

    file: str
    path: Path
    status: str  # "ok", "ok (shipped)", "missing" or "altered (...)"


def verify(root: str | os.PathLike | None = None) -> list[FileStatus]:
    """Checks every known data file (shipped copies and the data folder) against its sha256.

    Args:
      root: the data folder; `data_dir()` when None.

    Returns:
      One `FileStatus` per file in `CHECKSUMS`; nothing is raised for missing files.
    """
    rows = []
    for subdir, files in CHECKSUMS.items():
        for name, expected in files.items():
            status, where = "missing", None
            for path in candidates(subdir, name, root):
                why = check(path, expected)
                where = path
                if why is None:
                    status = "ok (shipped)" if path.parent == SHIPPED_DIR else "ok"
                    break
                if why != "missing":
                    status = why
            rows.append(FileStatus(f"{subdir}/{name}", where, status))
    return rows


# ----- per-node helpers shared by the vehicle and HAR loaders -----


def check_fraction(test_fraction: float) -> None:
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")


def node_split(n: int, test_fraction: float, rng: np.random.Generator):
    """Random (train_idx, test_idx) of one node, with the rounding of `FederatedData.from_nodes`
    (at least one test example when test_fraction > 0)."""
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    if n - n_test < 1:
        raise ValueError(f"{n} example(s) with test_fraction={test_fraction} leaves no train")
    perm = rng.permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def standardize(train: np.ndarray, test: np.ndarray):
    """Z-scores both with the mean/std of `train` over axis 0 (a zero std is left as 1)."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-12, std, 1.0)
    f = lambda a: ((a - mean) / std).astype(np.float32)
    return f(train), f(test)


def read_only(**arrays: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays, marked read-only because the cache shares them between callers."""
    for a in arrays.values():
        a.flags.writeable = False
    return arrays


def npz(data: bytes) -> np.lib.npyio.NpzFile:
    return np.load(io.BytesIO(data), allow_pickle=False)
