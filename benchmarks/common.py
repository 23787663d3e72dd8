"""What every benchmark records beside its figures: the machine, the software and the date."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from vitlab.atomic import atomic_write_text
from vitlab.cores import available_cores

RESULTS = Path(__file__).parent / "results"
# The project's shared data, as the tests find it: $VITLAB_SHARED_DATA, else ../shared/data beside the checkout.
SHARED_DATA = Path(os.environ.get("VITLAB_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
CIFAR_ARCHIVE = SHARED_DATA / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"


def cpuinfo_field(name: str) -> str | None:
    """The first value of a /proc/cpuinfo field ('model name', 'flags'), or None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's processor string), with its family and
    model numbers where Linux lists them: a cloud CPU's name ('AMD EPYC') hides its generation, and with
    it the peak (a bf16 product at about 410 GFLOP/s on one 2-core AMD EPYC here, 700 on a family-26 one)."""
    name = cpuinfo_field("model name") or platform.processor() or "unknown CPU"
    family, model = cpuinfo_field("cpu family"), cpuinfo_field("model")
    return f"{name} family {family} model {model}" if family and model else name


def bf16_units() -> str:
    """What runs bf16 matrix products on this CPU, which the model name often hides. It sets the bf16
    peak: 6.5x the fp32 peak on an Intel Xeon with AMX here, 2.5x on an AMD EPYC without AMX."""
    flags = set((cpuinfo_field("flags") or "").split())
    if "amx_bf16" in flags:
        return "AMX bf16"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16, no AMX"
    return f"no bf16 matrix units ({torch.backends.cpu.get_cpu_capability()})"


def machine_line(gpu: bool = False) -> str:
    """One line naming CPU (and its bf16 units), cores, Python and torch, for a results file; with `gpu`,
    led by the GPU PyTorch runs on, for figures measured there."""
    host = (
        f"{cpu_model()} ({bf16_units()}), {available_cores()} cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )
    return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), host {host}" if gpu else host


def report_head(title: str, script: str, gpu: bool = False) -> list[str]:
    """A results file's first lines: its title, then the command that wrote it (benchmarks/SCRIPT with this
    run's arguments), the machine (its GPU with `gpu`) with the threads PyTorch uses, and the date."""
    return [
        f"# {title}",
        "",
        f"- Command: `{' '.join(['python', f'benchmarks/{script}', *sys.argv[1:]])}`",
        f"- Machine: {machine_line(gpu)}, {torch.get_num_threads()} threads",
        f"- Date: {today()}",
    ]


def peak_rss_mb(pid: int | str = "self") -> float:
    """A process's peak resident memory in MB, from VmHWM (ru_maxrss would include a fork parent's); this
    process's by default. 0 once the process has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):  # gone, or a zombie whose memory is already released
        return 0.0


def run_to_end(
    command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> tuple[float, float, str]:
    """Run a command to its end: (wall seconds, its peak resident MB, its stderr). Exits with that stderr
    when the command fails. The peak is the child's own high-water mark, read while it runs (getrusage
    would also count this parent); stderr goes to a file, which cannot fill up and stall the child as a
    pipe nobody reads can."""
    with tempfile.TemporaryFile("w+") as errors:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=errors, text=True)
        peak_mb = 0.0
        while True:
            peak_mb = max(peak_mb, peak_rss_mb(process.pid))
            try:
                process.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                continue
        wall = time.perf_counter() - started
        errors.seek(0)
        stderr = errors.read()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr}")
    return wall, peak_mb, stderr


def train_for_epochs(
    epochs: int, out: Path, options: list[str] | None = None, env: dict[str, str] | None = None
) -> tuple[list[dict], float, float]:
    """`vitlab train --epochs N --out OUT --quiet --no-report [OPTIONS]` in a fresh process, to its end:
    (its epochs' records from metrics.jsonl, its wall seconds, its peak resident MB)."""
    command = [sys.executable, "-m", "vitlab", "train", "--epochs", str(epochs), "--out", str(out)]
    wall, peak_mb, _ = run_to_end([*command, "--quiet", "--no-report", *(options or [])], env=env)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return records, wall, peak_mb


def record(name: str, report: str, smoke_run: bool = False) -> None:
    """Print a benchmark's report and write it to benchmarks/results/NAME, whole or not at all (an
    interrupted run keeps the last complete one); a smoke run (--quick) leaves the recorded figures alone."""
    print(report, flush=True)
    if not smoke_run:
        RESULTS.mkdir(exist_ok=True)
        atomic_write_text(RESULTS / name, report if report.endswith("\n") else report + "\n")


def median_and_quartiles(ratios: list[float]) -> tuple[float, float, float]:
    """Median, first and third quartile of paired ratios (statistics.quantiles' default method; a single
    ratio is all three), so that every benchmark's interquartile ranges are computed alike. That method
    extrapolates from two ratios, past the smaller one and even below zero; a quartile is held within the
    ratios measured."""
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    low, _, high = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), max(low, min(ratios)), min(high, max(ratios))


def ratio_with_quartiles(figures: tuple[float, float, float]) -> str:
    """A median ratio and its quartiles (median_and_quartiles' figures), for a table: 1.20x (1.02-1.44)."""
    median, low, high = figures
    return f"{median:.2f}x ({low:.2f}-{high:.2f})"


def today() -> str:
    """The date in ISO form (UTC)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cifar_folder(work: Path) -> Path:
    """Unpack the CIFAR-10 JPEG archive (train/ and test/ class folders) into work/cifar10 once."""
    target = work / "cifar10"
    if not (target / "train").is_dir():
        if not CIFAR_ARCHIVE.is_file():
            sys.exit(f"no CIFAR-10 JPEG archive at {CIFAR_ARCHIVE}: set VITLAB_SHARED_DATA to the shared data folder")
        with tarfile.open(CIFAR_ARCHIVE) as archive:
            archive.extractall(target, filter="data")
    return target
