"""What every benchmark records beside its figures: the machine, the software and the date."""

from __future__ import annotations

import datetime
import platform
import tarfile
from pathlib import Path

import torch

from vitlab.cores import available_cores

RESULTS = Path(__file__).parent / "results"
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
CIFAR_ARCHIVE = SHARED_DATA / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    """One line naming CPU, cores, Python and torch, for a results file."""
    return f"{cpu_model()}, {available_cores()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB, from VmHWM (ru_maxrss would include a fork parent's)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def today() -> str:
    """The date in ISO form (UTC)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cifar_folder(work: Path) -> Path:
    """Unpack the CIFAR-10 JPEG archive (train/ and test/ class folders) into work/cifar10 once."""
    target = work / "cifar10"
    if not (target / "train").is_dir():
        with tarfile.open(CIFAR_ARCHIVE) as archive:
            archive.extractall(target, filter="data")
    return target
