"""`--nproc N`: a command re-run as N training processes under torchrun, and the workers' side of it.

The launcher runs torchrun's agent in its own process. Workers write a user error to a file instead
of printing it, so the launcher prints it once (not once per process) and without torchrun's
report of a failed worker; an interruption, too, is the launcher's to report. Imports nothing
heavy: the command line asks `launched_worker()` before torch loads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vitlab.errors import VitlabError

WORKER_ERRORS_VARIABLE = "VITLAB_WORKER_ERRORS"
LAUNCHER_PID_VARIABLE = "VITLAB_LAUNCHER_PID"
WORKERS_FOLDER_PREFIX = "vitlab-workers-"  # then the launcher's pid and "-": a temporary folder per launch


def launched_worker() -> bool:
    """Whether this process is one of the training processes `--nproc` started."""
    return WORKER_ERRORS_VARIABLE in os.environ and "RANK" in os.environ


def follow_launcher() -> None:
    """In a worker, end with the launcher (see interrupts.end_with_parent); elsewhere nothing."""
    from vitlab.interrupts import end_with_parent

    if launched_worker() and LAUNCHER_PID_VARIABLE in os.environ:
        end_with_parent(int(os.environ[LAUNCHER_PID_VARIABLE]))


def leave_error_for_launcher(message: str) -> bool:
    """In a worker, write its one-line error where the launcher reads it; False where there is no launcher to."""
    if not launched_worker():
        return False
    try:
        (Path(os.environ[WORKER_ERRORS_VARIABLE]) / f"rank{os.environ['RANK']}.txt").write_text(message)
    except OSError:
        return False  # the launcher is gone: the worker says it itself
    return True


def interrupted_message(run_dir: Path, nproc: int = 1) -> str:
    """What a stopped run tells the user: how to continue it (from its last finished epoch, or from the start)."""
    if not (run_dir / "config.yaml").is_file():
        return "vitlab: interrupted before the run started; nothing was saved"
    again = f"vitlab train --resume {run_dir}" + (f" --nproc {nproc}" if nproc > 1 else "")
    return f"vitlab: interrupted; continue from the last finished epoch with: {again}"


def run_processes(argv: list[str], nproc: int, run_dir: Path) -> int:
    """Run `vitlab ARGV` as `nproc` processes under torchrun (gloo on CPU, nccl on GPU); 130 if interrupted.

    `argv` must name the run directory every process writes to; the run's own checks are the caller's.
    """
    import logging
    import tempfile

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    from vitlab.cores import available_cores
    from vitlab.interrupts import raise_swallowed_interrupt

    # Setting the thread count ourselves also keeps torchrun from printing its banner about it.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // nproc)))
    # This process is torchrun's agent; its log repeats, as a traceback, what the workers print. Each
    # of its modules sets its own logger's level, so the parent's level alone does not quiet them.
    for name in [*logging.root.manager.loggerDict, "torch.distributed.elastic"]:
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    raise_swallowed_interrupt()  # one an import above swallowed: processes started now would never get it
    remove_abandoned_worker_folders()
    with tempfile.TemporaryDirectory(prefix=f"{WORKERS_FOLDER_PREFIX}{os.getpid()}-") as errors:
        # Ctrl-C stays a KeyboardInterrupt here instead of torchrun's signal of the same name forwarded to
        # the workers: its agent then stops them with SIGTERM, which ends a worker at once wherever it is
        # (Python sets no handler for it), even half-started or blocked in a collective call. (torchrun
        # sets TORCHELASTIC_SIGNALS_TO_HANDLE from this option, so the variable alone is overwritten.)
        # Its log directory (per-worker error files) goes in this folder too: left to itself, torchrun
        # makes a /tmp/torchelastic_* tree for every run and never removes it.
        launch = get_args_parser().parse_args(
            ["--standalone", f"--nproc_per_node={nproc}", "--signals_to_handle=SIGTERM,SIGHUP,SIGQUIT"]
            + [f"--log-dir={Path(errors) / 'torchrun'}", "-m", "vitlab", *argv]
        )
        os.environ[WORKER_ERRORS_VARIABLE] = errors
        os.environ[LAUNCHER_PID_VARIABLE] = str(os.getpid())  # torchrun's agent, in this process, starts them
        try:
            torchrun(launch)
        except (SignalException, KeyboardInterrupt):
            print(interrupted_message(run_dir, nproc), file=sys.stderr)
            return 130
        except ChildFailedError as failure:
            messages = sorted({path.read_text() for path in Path(errors).glob("rank*.txt")})
            if messages:
                raise VitlabError("; ".join(messages)) from None
            # The first failure is the cause; torchrun then stops the other processes with SIGTERM.
            rank, first = failure.get_first_failure()
            raise VitlabError(
                f"training process {rank} failed ({describe_exit(first.exitcode)}); its output is above"
            ) from None
    return 0


def remove_abandoned_worker_folders() -> None:
    """Delete the temporary folders of launchers that are gone: one killed outright (SIGKILL, the
    out-of-memory killer) could not remove its own, and its workers end with it."""
    import tempfile

    from vitlab.interrupts import remove_left_by_ended_processes

    remove_left_by_ended_processes(
        Path(tempfile.gettempdir()).glob(f"{WORKERS_FOLDER_PREFIX}*-*"),
        lambda folder: folder.name.removeprefix(WORKERS_FOLDER_PREFIX).partition("-")[0],
    )


def describe_exit(code: int) -> str:
    """'exit code 3', or for a process a signal ended, 'killed by SIGABRT'."""
    import signal

    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"
