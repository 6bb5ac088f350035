"""Real federated data sets, verified by sha256: C-MAPSS turbofans, SensIT vehicles, UCI HAR.

C-MAPSS FD001/FD003 ship with the package; the others are read from the data folder
(`data_dir()`: `$FEDMTL_DATA`, else `~/.fedmtl/data`). See docs/datasets.md.
"""

from fedmtl.datasets._files import (
    CHECKSUMS,
    DataFileError,
    FileStatus,
    data_dir,
    verify,
)
from fedmtl.datasets.har import har
from fedmtl.datasets.turbofan import (
    Engine,
    TurbofanStudy,
    phm08_score,
    rmse,
    turbofan,
    turbofan_windows,
)
from fedmtl.datasets.vehicle import vehicle

__all__ = [
    "CHECKSUMS",
    "DataFileError",
    "Engine",
    "FileStatus",
    "TurbofanStudy",
    "data_dir",
    "har",
    "phm08_score",
    "rmse",
    "turbofan",
    "turbofan_windows",
    "vehicle",
    "verify",
]
