import os
import subprocess
import sys
import tempfile

from vitlab.launch import remove_abandoned_worker_folders


def test_only_the_folders_of_launchers_that_are_gone_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # its pid now names no process
    abandoned = tmp_path / f"vitlab-workers-{ended.pid}-k2j4x9ab"
    (abandoned / "torchrun").mkdir(parents=True)
    running = tmp_path / f"vitlab-workers-{os.getpid()}-q8w7e6rt"  # a launcher still at work
    running.mkdir()
    unnamed = tmp_path / "vitlab-workers-0fq4ooeq"  # no launcher pid in its name: not ours to judge
    unnamed.mkdir()
    remove_abandoned_worker_folders()
    assert not abandoned.exists() and running.is_dir() and unnamed.is_dir()
