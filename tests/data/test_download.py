"""The real download code against an HTTP server on 127.0.0.1 serving ../shared/data and small archives."""

import hashlib
import io
import pickle
import stat
import tarfile
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from tests.helpers import ordinary_file_mode, shared_data
from vitlab.data import sources
from vitlab.data.cifar import LAYOUT, read_cifar_archive
from vitlab.data.download import RemoteFile, download
from vitlab.data.sources import load_split
from vitlab.errors import DataError


class Handler(BaseHTTPRequestHandler):
    def __init__(self, files, *args, **kwargs):
        self.files = files
        super().__init__(*args, **kwargs)

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 (the http.server API)
        name = self.path.rsplit("/", 1)[-1]
        payload = self.files.get(self.path.strip("/")) or self.files.get(name)
        if payload is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.path.startswith("/drop/"):
            self.wfile.write(payload[: len(payload) // 2])  # then the connection closes early
            return
        self.wfile.write(payload)


@pytest.fixture
def server():
    files: dict[str, bytes] = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, files))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield files, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def fashion_files():
    return {p.name: p.read_bytes() for p in shared_data("fashion-mnist").glob("*.gz")}


def test_fashion_mnist_downloads_verifies_and_loads(server, tmp_path, monkeypatch, capsys):
    files, url = server
    files.update(fashion_files())
    monkeypatch.setenv("VITLAB_DATA_MIRROR", url)
    split = load_split("fashion-mnist", "test", str(tmp_path))
    # No bar where nobody watches it live (rich left an empty line on a pipe); stdout carries --json results.
    assert capsys.readouterr() == ("", "")
    assert split.images.shape == (10000, 1, 28, 28)
    assert np.bincount(split.labels.numpy()).tolist() == [1000] * 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    files.clear()  # a second load uses the verified files and needs no server
    assert len(load_split("fashion-mnist", "test", str(tmp_path))) == 10000


def test_corrupted_download_is_rejected_and_never_kept(server, tmp_path, monkeypatch):
    files, url = server
    good = shared_data("fashion-mnist/t10k-labels-idx1-ubyte.gz").read_bytes()
    files["t10k-labels-idx1-ubyte.gz"] = good[:-10] + b"x" * 10
    remote = sources.DATASETS["fashion-mnist"].files["t10k-labels-idx1-ubyte.gz"]
    monkeypatch.setenv("VITLAB_DATA_MIRROR", url)
    with pytest.raises(DataError, match="checksum mismatch"):
        download(remote, tmp_path, show_progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the bad file nor a partial one


def test_dropped_connection_falls_back_to_the_next_mirror(server, tmp_path, monkeypatch):
    files, url = server
    payload = shared_data("mnist/t10k-labels-idx1-ubyte.gz").read_bytes()
    files["t10k-labels-idx1-ubyte.gz"] = payload
    remote = RemoteFile(
        "t10k-labels-idx1-ubyte.gz", (f"{url}/drop/", f"{url}/"), sha256=hashlib.sha256(payload).hexdigest()
    )
    monkeypatch.delenv("VITLAB_DATA_MIRROR")
    path = download(remote, tmp_path, show_progress=False)
    assert path.read_bytes() == payload
    assert stat.S_IMODE(path.stat().st_mode) == ordinary_file_mode()  # not the temporary file's 0600
    only_drop = RemoteFile(remote.name, (f"{url}/drop/",), sha256=remote.sha256)
    path.unlink()
    with pytest.raises(DataError, match="put the official file in"):
        download(only_drop, tmp_path, show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_offline_error_says_where_to_put_the_files(tmp_path):
    with pytest.raises(DataError, match=f"by hand.*|{tmp_path}"):
        load_split("fashion-mnist", "train", str(tmp_path))


def cifar_archive(kind: str, per_split: int = 6) -> bytes:
    """A tiny archive in the official CIFAR python layout (pickled dicts of bytes keys)."""
    rng = np.random.default_rng(0)
    folder, train_members, test_member, meta_member, label_key, names_key = LAYOUT[kind]
    classes = 10 if kind == "cifar10" else 100
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:

        def add(member, obj):
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"{folder}/{member}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

        for member in [*train_members, test_member]:
            add(
                member,
                {
                    label_key.encode(): [int(x) for x in rng.integers(0, classes, per_split)],
                    b"data": rng.integers(0, 255, (per_split, 3072), dtype=np.uint8),
                },
            )
        add(meta_member, {names_key.encode(): [f"name{i}".encode() for i in range(classes)]})
    return buffer.getvalue()


@pytest.mark.parametrize(
    "kind,archive_name", [("cifar10", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python.tar.gz")]
)
def test_cifar_archives_download_and_load(server, tmp_path, monkeypatch, kind, archive_name):
    files, url = server
    payload = cifar_archive(kind)
    files[archive_name] = payload
    info = sources.DATASETS[kind]
    remote = info.files[archive_name]
    patched = type(remote)(remote.name, remote.mirrors, md5=hashlib.md5(payload).hexdigest())
    monkeypatch.setitem(info.files, archive_name, patched)  # the tiny archive's checksum, not the official one
    monkeypatch.setenv("VITLAB_DATA_MIRROR", url)
    train = load_split(kind, "train", str(tmp_path))
    test = load_split(kind, "test", str(tmp_path))
    assert train.images.shape == (6 * (5 if kind == "cifar10" else 1), 3, 32, 32)
    assert test.images.shape == (6, 3, 32, 32)
    assert train.class_names[:2] == ("name0", "name1")


def test_a_pickle_with_code_in_it_is_refused(tmp_path, monkeypatch):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = pickle.dumps({b"data": Payload()}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    (tmp_path / "evil.tar.gz").write_bytes(buffer.getvalue())

    with pytest.raises(DataError, match="refusing to load .*print"):
        read_cifar_archive(tmp_path / "evil.tar.gz", "cifar10", "test")
