import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import grey_image_folder, unreadable_image_folder
from vitlab import terminal
from vitlab.config import DataConfig
from vitlab.data import folders
from vitlab.data.datasets import input_shape, open_dataset
from vitlab.errors import DataError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))


def make_folder(root, classes=("cat", "dog"), per_class=6, modes=("RGB", "L", "RGBA", "P")):
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            size = (20 + 3 * index, 17 + 2 * index)
            base = np.full((size[1], size[0], 3), 60 + 120 * label, dtype=np.uint8)
            noise = rng.integers(0, 30, base.shape, dtype=np.uint8)
            image = Image.fromarray(base + noise).convert(modes[index % len(modes)])
            image.save(
                root / name / f"{index}.{'png' if index % 2 else 'jpg'}"
                if image.mode in ("RGB", "L")
                else root / name / f"{index}.png"
            )
    return root


def test_train_and_test_folders_become_labelled_uint8_splits(tmp_path):
    make_folder(tmp_path / "data" / "train")
    make_folder(tmp_path / "data" / "test", per_class=3)
    splits = open_dataset(DataConfig(dataset=str(tmp_path / "data")), channels=3, size=16)
    assert splits.class_names == ("cat", "dog")
    assert splits.train.images.shape == (12, 3, 16, 16) and splits.train.images.dtype == torch.uint8
    assert splits.test.images.shape == (6, 3, 16, 16)
    assert sorted(splits.train.labels.tolist()) == [0] * 6 + [1] * 6
    assert len(splits.mean) == 3 and all(s > 0 for s in splits.std)
    assert input_shape(str(tmp_path / "data")) == (3, 2)


def test_flat_folder_gets_a_seeded_stratified_split(tmp_path):
    make_folder(tmp_path / "flat", per_class=10)
    config = DataConfig(dataset=str(tmp_path / "flat"), test_fraction=0.3)
    first = open_dataset(config, channels=1, size=12, seed=5)
    again = open_dataset(config, channels=1, size=12, seed=5)
    assert torch.bincount(first.test.labels).tolist() == [3, 3]
    assert torch.equal(first.test.images, again.test.images)
    other = open_dataset(config, channels=1, size=12, seed=6)
    assert not torch.equal(first.test.images, other.test.images)


def test_unreadable_files_are_skipped_and_reported(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "cat" / "notes.jpg").write_text("not a picture")
    good = (root / "dog" / "0.jpg").read_bytes()
    (root / "dog" / "broken.jpg").write_bytes(good[: len(good) // 3])
    (root / "dog" / "readme.txt").write_text("ignored: not an image suffix")
    splits = open_dataset(DataConfig(dataset=str(root)), channels=3, size=16)
    assert len(splits.train) + len(splits.test) == 12
    notes = " ".join(splits.notes)
    assert notes.count("1 unreadable file(s)") + notes.count("2 unreadable file(s)") >= 1
    assert "notes.jpg" in notes and "broken.jpg" in notes
    assert (
        f"1 file(s) not in PNG, JPEG, BMP, WebP, GIF or TIFF format left out (first: {root / 'dog' / 'readme.txt'})"
        in notes
    )


def test_gif_and_tiff_files_are_images_of_a_folder_and_hidden_files_pass_unnoted(tmp_path):
    root = make_folder(tmp_path / "data", per_class=2)
    frames = [Image.fromarray(np.full((9, 11, 3), shade, dtype=np.uint8)) for shade in (10, 200)]
    frames[0].save(root / "cat" / "moving.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(np.full((13, 7), 0.5, dtype=np.float32), mode="F").save(root / "dog" / "scan.tiff")
    (root / "dog" / ".DS_Store").write_bytes(b"\0\1")
    (root / "dog" / "._scan.tiff").write_bytes(b"\0\5\26\7")  # macOS's metadata beside a copied file
    (root / "dog" / ".thumbnails").mkdir()
    frames[1].save(root / "dog" / ".thumbnails" / "scan.png")
    splits = open_dataset(DataConfig(dataset=str(root), test_fraction=0.0), channels=3, size=8)
    assert len(splits.train) == 6 and splits.notes == []
    dark = splits.train.images[splits.train.images.float().mean(dim=(1, 2, 3)) < 20]
    assert len(dark) == 1 and int(dark.max()) == 10  # an animated GIF gives its first frame
    assert (splits.train.images.float().mean(dim=(1, 2, 3)) - 128).abs().min() <= 1  # the float TIFF, 0.5 of its range


def test_folder_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        open_dataset(DataConfig(dataset=str(tmp_path / "empty")), 3, 16)
    root = make_folder(tmp_path / "data")
    (root / "bird").mkdir()
    with pytest.raises(DataError, match="no images.*bird"):
        open_dataset(DataConfig(dataset=str(root)), 3, 16)
    with pytest.raises(DataError, match="not found"):
        open_dataset(DataConfig(dataset=str(tmp_path / "absent/")), 3, 16)
    split = tmp_path / "split"
    make_folder(split / "train")
    make_folder(split / "test", per_class=1)
    (split / "test" / "emu").mkdir()
    shutil.copy(split / "test" / "cat" / "0.jpg", split / "test" / "emu")
    with pytest.raises(DataError, match=rf"{split / 'test'} has class folder\(s\) 'emu' that the training split"):
        open_dataset(DataConfig(dataset=str(split)), 3, 16)
    alone = make_folder(tmp_path / "alone", classes=("cat",))
    with pytest.raises(DataError, match=r"has one class folder \(cat\); a classifier needs two or more"):
        open_dataset(DataConfig(dataset=str(alone)), 3, 16)
    # A file where the folder should be: "not found" would send the user looking for a path that is there.
    shutil.make_archive(str(tmp_path / "packed"), "gztar", root)
    with pytest.raises(DataError, match=r"packed.tar.gz is a file, not a folder .*\(an archive: unpack it"):
        open_dataset(DataConfig(dataset=str(tmp_path / "packed.tar.gz")), 3, 16)
    with pytest.raises(DataError, match=r"0.jpg is a file, not a folder of class folders$"):
        open_dataset(DataConfig(dataset=str(root / "cat" / "0.jpg")), 3, 16)


def test_a_split_with_no_readable_image_is_an_error_that_says_so(tmp_path):
    root = unreadable_image_folder(tmp_path / "junk")
    with pytest.raises(DataError, match=r"no train image in .* could be read: 8 unreadable file\(s\)"):
        open_dataset(DataConfig(dataset=str(root)), 3, 16)


def test_symlink_loop_does_not_hang(tmp_path):
    root = make_folder(tmp_path / "data", per_class=3)
    os.symlink(root / "cat", root / "cat" / "loop")
    splits = open_dataset(DataConfig(dataset=str(root), test_fraction=0.34), 3, 16)
    assert len(splits.train) + len(splits.test) == 6


def test_decoded_folder_is_cached_and_invalidated_by_changes(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data", per_class=4)
    config = DataConfig(dataset=str(root), test_fraction=0.25)
    first = open_dataset(config, 3, 16)
    calls = []
    monkeypatch.setattr(
        folders, "decode_files", lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(AssertionError)
    )
    cached = open_dataset(config, 3, 16)  # no decoding: would raise
    assert torch.equal(first.train.images, cached.train.images) and not calls
    Image.new("RGB", (9, 9), (255, 0, 0)).save(root / "cat" / "new.png")
    with pytest.raises(AssertionError):
        open_dataset(config, 3, 16)  # the folder changed, so it must decode again


@pytest.mark.parametrize("damage", ["truncated images", "garbled index"])
def test_a_damaged_cache_entry_is_decoded_again_and_replaced(tmp_path, capsys, damage):
    root = make_folder(tmp_path / "data", per_class=4)
    config = DataConfig(dataset=str(root), test_fraction=0.25)
    expected = open_dataset(config, 3, 16).train.images.clone()  # read now: the file under its mapping shrinks
    entries = list((tmp_path / "cache" / "folders").iterdir())
    assert len(entries) == 2  # train and test
    for entry in entries:
        if damage == "truncated images":
            os.truncate(entry / "images.u8", 10)
        else:
            (entry / "index.json").write_text("{")
    again = open_dataset(config, 3, 16)
    assert torch.equal(again.train.images, expected)
    assert "could not cache" not in capsys.readouterr().err
    assert sorted((tmp_path / "cache" / "folders").iterdir()) == sorted(entries)
    for entry in entries:  # repaired in place: the next run reads the cache again
        assert folders._read_cache(entry, 3, 16) is not None


def test_the_cache_lists_its_entries_and_a_changed_folder_retires_its_old_ones(tmp_path, monkeypatch):
    root, other = make_folder(tmp_path / "data", per_class=4), make_folder(tmp_path / "other", per_class=3)
    open_dataset(DataConfig(dataset=str(root), test_fraction=0.25), 3, 16, seed=0)
    open_dataset(DataConfig(dataset=str(root), test_fraction=0.25), 3, 16, seed=1)  # another split: kept
    open_dataset(DataConfig(dataset=str(root), test_fraction=0.25), 3, 20)  # another size: kept
    open_dataset(DataConfig(dataset=str(other), test_fraction=0.34), 1, 16)
    entries = folders.cache_entries()
    assert len(entries) == 8 and not any(entry.outdated for entry in entries)
    mine = [entry for entry in entries if entry.folder == str(root)]
    assert sorted((entry.images, entry.shape) for entry in mine) == [(2, "3x16x16")] * 2 + [(2, "3x20x20")] + [
        (6, "3x16x16")
    ] * 2 + [(6, "3x20x20")]
    assert all(entry.bytes >= entry.images * 3 * 16 * 16 for entry in mine)
    Image.new("RGB", (9, 9), (255, 0, 0)).save(root / "cat" / "new.png")  # an image added
    assert [entry.outdated for entry in folders.cache_entries() if entry.folder == str(root)] == [True] * 6
    open_dataset(DataConfig(dataset=str(root), test_fraction=0.25), 3, 16)  # decodes it anew, retires the rest
    entries = folders.cache_entries()
    assert sorted((entry.folder, entry.images) for entry in entries) == [(str(root), 2), (str(root), 7)] + [
        (str(other), 2),
        (str(other), 4),
    ]
    assert not any(entry.outdated for entry in entries)
    other.rename(tmp_path / "moved")  # as a drive that is not mounted: its entries stay, not called outdated
    assert [entry.outdated for entry in folders.cache_entries() if entry.folder == str(other)] == [False, False]
    # Half-written entries: one a live process is writing (this one), one whose writer was killed.
    writing = tmp_path / "cache" / "folders" / f"abc{folders.TEMPORARY_ENTRY}{os.getpid()}"
    writing.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = tmp_path / "cache" / "folders" / f"def{folders.TEMPORARY_ENTRY}{dead.pid}"
    (abandoned / "images.u8").parent.mkdir()
    (abandoned / "images.u8").write_bytes(b"half")
    assert len(folders.cache_entries()) == 4  # neither is listed
    monkeypatch.setattr(folders, "folder_state", lambda *a: pytest.fail("clearing lists a folder again"))
    assert len(folders.clear_cache()) == 4
    assert list((tmp_path / "cache" / "folders").iterdir()) == [writing] and folders.cache_entries() == []


def test_full_disk_while_caching_costs_the_cache_not_the_run(tmp_path, monkeypatch, capsys):
    root = make_folder(tmp_path / "data", per_class=4)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(folders.np, "save", disk_full)
    splits = open_dataset(DataConfig(dataset=str(root), test_fraction=0.25), 3, 16)
    assert len(splits.train) == 6
    said = capsys.readouterr()
    assert "could not cache" in said.err and said.out == ""  # stdout carries results (--json) alone
    cache = tmp_path / "cache" / "folders"
    assert not cache.exists() or not any(cache.iterdir())  # no half-written cache left behind
    monkeypatch.undo()
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    again = open_dataset(DataConfig(dataset=str(root), test_fraction=0.25), 3, 16)  # half-written tmp not used
    assert torch.equal(again.train.images, splits.train.images)


def test_decoding_shows_its_progress_on_stderr_only(tmp_path, monkeypatch, capsys):
    root = make_folder(tmp_path / "data", per_class=4)
    monkeypatch.setattr(terminal, "COUNTING_BAR_FROM", 1)
    shown = []
    monkeypatch.setattr(terminal.Progress, "advance", lambda self, task, advance=1: shown.append(advance))
    splits = open_dataset(DataConfig(dataset=str(root), test_fraction=0.25), 3, 16)
    assert len(shown) == len(splits.train) + len(splits.test) == 8
    assert capsys.readouterr().out == ""


def anonymous_memory_mb() -> float:
    """This process's resident anonymous memory (heap, not file pages the OS can drop)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def test_decoded_images_stream_to_disk_so_memory_stays_bounded(tmp_path):
    # 600 small files decoded at 160x160 RGB: 46 MB of pixels, which must not land on the heap.
    root = tmp_path / "big"
    for label in range(2):
        (root / str(label)).mkdir(parents=True)
        for index in range(300):
            Image.new("RGB", (5, 4), (index % 256, 40 * label, 7)).save(root / str(label) / f"{index}.png")
    files = folders.folder_files(root, test_fraction=0.0).train
    before = anonymous_memory_mb()
    split = folders.load_folder_split(files, 3, 160, workers=1)
    grown = anonymous_memory_mb() - before
    assert split.images.shape == (600, 3, 160, 160)
    assert grown < 15, f"decoding grew the heap by {grown:.0f} MB for 46 MB of images"
    # The rows are the images, in file order, read back from the file.
    path, label = files[123]
    expected = folders.load_image(path, 3, 160)
    assert torch.equal(split.images[123], expected) and split.labels[123] == label
    again = folders.load_folder_split(files, 3, 160, workers=1)  # from the cache, mapped again
    assert torch.equal(again.images[599], split.images[599])
    uncached = folders.load_folder_split(files, 3, 160, use_cache=False, workers=1)
    assert torch.equal(uncached.images[7], split.images[7])


def test_a_subset_of_a_folder_draws_from_every_class_in_proportion(tmp_path):
    # A folder lists its files class by class: the first 9 of these 30 would all be class a.
    root = grey_image_folder(tmp_path / "folder", classes=("a", "b", "c"), per_class=10)
    data = open_dataset(DataConfig(dataset=str(root), test_fraction=0.0, train_subset=9), 1, 12)
    assert len(data.train) == 9 and data.train.labels.bincount().tolist() == [3, 3, 3]
    whole = open_dataset(DataConfig(dataset=str(root), test_fraction=0.0), 1, 12)
    spread = [0, 4, 7, 11, 14, 18, 22, 25, 29]  # from the first image to the last, evenly
    assert torch.equal(data.train.images, whole.train.images[spread])
