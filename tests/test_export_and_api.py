import dataclasses
import stat

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from tests.helpers import ordinary_file_mode, tiny_config
from vitlab.data.tensors import to_model_input
from vitlab.engine.checkpoint import save_checkpoint
from vitlab.errors import ConfigError, ImageError
from vitlab.export import ExportError, OnnxClassifier, export_onnx, export_torchscript
from vitlab.models.registry import build_model, model_config
from vitlab.models.vit import ViT

INFO = {"class_names": list("abcdefghij"), "mean": [0.1307], "std": [0.3081], "dataset": "mnist"}


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = ViT(tiny_config(pool="map")).eval()
    torch.nn.init.normal_(model.head.weight)
    save_checkpoint(tmp_path / "model.safetensors", model, INFO)
    return tmp_path / "model.safetensors", model


@pytest.mark.parametrize("fixed_batch", [None, 1, 2])
def test_onnx_export_matches_pytorch_and_carries_metadata(tmp_path, checkpoint, fixed_batch):
    path, model = checkpoint
    result = export_onnx(model, INFO, tmp_path / "model.onnx", fixed_batch)
    assert result.max_abs_diff <= 1e-4
    onnx_model = OnnxClassifier(tmp_path / "model.onnx")
    assert onnx_model.fixed_batch == fixed_batch
    assert onnx_model.metadata["class_names"] == INFO["class_names"]
    images = torch.randn(3, 1, 28, 28)  # with a fixed batch of 2: a full chunk, then one image padded to two
    with torch.no_grad():
        torch.testing.assert_close(onnx_model.logits(images), model(images), atol=1e-4, rtol=0)


def test_failed_onnx_check_leaves_no_file(tmp_path, checkpoint, monkeypatch):
    _, model = checkpoint
    monkeypatch.setattr("vitlab.export.ONNX_TOLERANCE", -1.0)  # no output can pass
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(model, INFO, tmp_path / "bad.onnx")
    assert list(tmp_path.glob("bad.onnx*")) == [] and list(tmp_path.glob(".bad.onnx*")) == []


# Loading the file is a user's step; torch 2.13 warns that TorchScript is deprecated (#6 asks for it).
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_export_runs_any_batch(tmp_path, checkpoint):
    _, model = checkpoint
    result = export_torchscript(model, tmp_path / "model.pt")
    assert result.max_abs_diff <= 1e-5
    # written through a temporary file, yet with the permissions of any file the user creates
    assert stat.S_IMODE((tmp_path / "model.pt").stat().st_mode) == ordinary_file_mode()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    loaded = torch.jit.load(str(tmp_path / "model.pt"))
    assert loaded(torch.randn(7, 1, 28, 28)).shape == (7, 10)


def test_python_api_predicts_from_paths_pil_numpy_and_tensors(tmp_path, checkpoint):
    path, model = checkpoint
    digit = (np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)
    Image.fromarray(digit).save(tmp_path / "digit.png")
    classifier = vitlab.load(path)
    inputs = [
        tmp_path / "digit.png",
        Image.fromarray(digit),
        digit,
        digit.astype(np.float32) / 255.0,
        torch.from_numpy(digit)[None],
        np.stack([digit] * 3, axis=-1),
    ]
    predictions = classifier.predict(inputs, top_k=3)
    assert len(predictions) == len(inputs)
    first = predictions[0]
    assert len(first.labels) == 3 and first.label in INFO["class_names"]
    for other in predictions[1:5]:  # the same grey digit however it is passed
        assert other.labels == first.labels
    expected = model.predict_proba(((torch.from_numpy(digit).float() / 255 - 0.1307) / 0.3081)[None, None])
    torch.testing.assert_close(classifier.predict_proba(inputs[0]), expected, atol=1e-5, rtol=0)
    with pytest.raises(ImageError, match="cannot read an image"):
        classifier.predict([42])
    # Grey with alpha, as np.asarray reads an "LA" PNG: one image (it was split into 28 before), the file's reading.
    alpha = np.tile(np.linspace(0, 255, 28).astype(np.uint8), (28, 1))
    Image.fromarray(np.stack([digit, alpha], axis=-1), mode="LA").save(tmp_path / "digit_alpha.png")
    grey_alpha = np.asarray(Image.open(tmp_path / "digit_alpha.png"))
    assert grey_alpha.shape == (28, 28, 2)
    from_file = classifier.predict_proba(tmp_path / "digit_alpha.png")
    for same in (grey_alpha, torch.tensor(grey_alpha).permute(2, 0, 1)):
        torch.testing.assert_close(classifier.predict_proba(same), from_file)


def test_a_loaded_classifier_shows_what_it_holds(checkpoint, monkeypatch):
    path, model = checkpoint
    expected = f"Classifier({str(path)!r}: ViT, 1x28x28 input, 10 classes (a, b, c, d, e, f, g, h, i, j), on cpu)"
    assert repr(vitlab.load(path, device="cpu")) == expected
    monkeypatch.setattr("vitlab.api.REPR_CLASSES", 3)
    onnx_path = path.with_suffix(".onnx")
    export_onnx(model, INFO, onnx_path)
    assert (
        repr(vitlab.load(onnx_path))
        == f"Classifier({str(onnx_path)!r}: ONNX, 1x28x28 input, 10 classes (a, b, c, ...), on cpu)"
    )


def test_python_api_splits_stacked_batches_into_images(checkpoint, monkeypatch):
    path, _ = checkpoint
    classifier = vitlab.load(path)
    digits = (np.random.default_rng(3).random((5, 28, 28)) * 255).astype(np.uint8)
    one_by_one = classifier.predict_proba(list(digits))
    monkeypatch.setattr("vitlab.api.PREDICT_CHUNK", 2)  # forward passes of 2, 2 and 1 images
    torch.testing.assert_close(classifier.predict_proba(list(digits)), one_by_one, atol=1e-6, rtol=0)
    for batch in (digits, digits[..., None], torch.from_numpy(digits), torch.from_numpy(digits)[:, None]):
        torch.testing.assert_close(classifier.predict_proba(batch), one_by_one)
    assert len(classifier.predict(digits)) == 5
    assert classifier.predict_proba(torch.from_numpy(digits[:1])).shape == (1, 10)  # (1, H, W): one grey image
    with pytest.raises(ImageError, match="1, 2, 3 or 4 channels"):
        classifier.predict(np.zeros((28, 28, 5), dtype=np.uint8)[None])


def test_python_api_reads_arrays_of_wide_types_as_image_files_of_them_and_refuses_non_images(tmp_path, checkpoint):
    path, _ = checkpoint
    classifier = vitlab.load(path)
    scan = (np.random.default_rng(4).random((28, 28)) * 65535).astype(np.uint16)
    Image.fromarray(scan).save(tmp_path / "scan.png")  # a 16-bit PNG
    as_file = classifier.predict_proba(tmp_path / "scan.png")
    torch.testing.assert_close(classifier.predict_proba(scan), as_file)  # scaled from 65535, not clipped at 255
    torch.testing.assert_close(classifier.predict_proba(scan.astype(np.float32) / 65535), as_file, atol=1e-3, rtol=0)
    digit = torch.from_numpy(scan[None] // 257).float() / 255  # bfloat16 keeps each k/255 within half a level
    torch.testing.assert_close(classifier.predict_proba(digit.bfloat16()), classifier.predict_proba(digit))
    # nothing in, nothing out: a (0, classes) array and no predictions
    assert classifier.predict_proba([]).shape == (0, 10) and classifier.predict(np.zeros((0, 28, 28))) == []
    with pytest.raises(ImageError, match="NaN or infinite"):
        classifier.predict(np.full((28, 28), np.nan, dtype=np.float32))
    normalised = (torch.from_numpy(scan / 65535.0).float()[None] - 0.1307) / 0.3081
    with pytest.raises(ImageError, match=r"minimum of -0\.4\d+: pass the image before normalisation"):
        classifier.predict(normalised)
    with pytest.raises(ImageError, match="must hold numbers"):
        classifier.predict(np.full((28, 28), "x"))
    with pytest.raises(ValueError, match="top_k must be at least 1, got 0"):
        classifier.predict(scan, top_k=0)


def test_a_cnn_runs_at_another_size_and_an_onnx_file_only_at_its_own(tmp_path, checkpoint):
    cnn = build_model(dataclasses.replace(model_config("resnet-small"), in_channels=1, num_classes=10)).eval()
    save_checkpoint(tmp_path / "cnn.safetensors", cnn, INFO)
    digit = (np.random.default_rng(4).random((28, 28)) * 255).astype(np.uint8)
    big = vitlab.load(tmp_path / "cnn.safetensors", img_size=40)
    pixels = big.to_uint8(digit)
    assert big.img_size == 40 and pixels.shape == (1, 40, 40)  # resized to 40, not to the trained 28
    with torch.no_grad():
        expected = cnn(to_model_input(pixels[None], INFO["mean"], INFO["std"], 40, 1)).softmax(dim=1)
    torch.testing.assert_close(big.predict_proba(digit), expected, atol=1e-6, rtol=0)
    _, model = checkpoint
    export_onnx(model, INFO, tmp_path / "model.onnx")
    with pytest.raises(ConfigError, match="runs at the 28x28 it was exported at"):
        vitlab.load(tmp_path / "model.onnx", img_size=42)


def test_python_api_runs_an_exported_onnx_file(tmp_path, checkpoint):
    path, model = checkpoint
    export_onnx(model, INFO, tmp_path / "model.onnx")
    digit = (np.random.default_rng(1).random((28, 28)) * 255).astype(np.uint8)
    from_onnx = vitlab.load(tmp_path / "model.onnx").predict([digit, digit])
    from_torch = vitlab.load(path).predict([digit, digit])
    assert [p.label for p in from_onnx] == [p.label for p in from_torch]
    assert abs(from_onnx[0].probabilities[0] - from_torch[0].probabilities[0]) < 1e-4


def test_python_api_picks_its_device_and_refuses_one_that_is_not_there(tmp_path, checkpoint, monkeypatch):
    path, model = checkpoint
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU, even one with
    digit = (np.random.default_rng(2).random((28, 28)) * 255).astype(np.uint8)
    automatic, on_cpu = vitlab.load(path), vitlab.load(path, device="cpu")
    assert automatic.device == on_cpu.device == torch.device("cpu")
    assert next(on_cpu._model.parameters()).device == torch.device("cpu")
    torch.testing.assert_close(automatic.predict_proba(digit), on_cpu.predict_proba(digit), atol=0, rtol=0)
    with pytest.raises(ConfigError, match="device cuda asks for CUDA, but no CUDA device is available"):
        vitlab.load(path, device="cuda")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        vitlab.load(path, device="gpu")
    export_onnx(model, INFO, tmp_path / "model.onnx")
    assert vitlab.load(tmp_path / "model.onnx", device="cpu").device == torch.device("cpu")
    with pytest.raises(ConfigError, match="an ONNX file runs on the CPU through onnxruntime, not on cuda"):
        vitlab.load(tmp_path / "model.onnx", device="cuda")


def test_a_vit_runs_at_another_image_size_with_a_resampled_position_table(tmp_path, checkpoint):
    path, model = checkpoint
    big = vitlab.load(path, img_size=42)
    assert big.img_size == 42 and big._model.pos_embed.shape == (1, 36, 32)
    digit = (np.random.default_rng(2).random((28, 28)) * 255).astype(np.uint8)
    probs = big.predict_proba(digit)
    assert probs.shape == (1, 10)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1))
    # The rest of the weights are untouched.
    torch.testing.assert_close(big._model.blocks[0].attn.qkv.weight.cpu(), model.blocks[0].attn.qkv.weight)
    # A size off the patch grid names the sizes that fit, not model.pad_to_patch, a setting of training runs.
    with pytest.raises(ConfigError, match=r"7x7 patches, so its input size must be a multiple of 7: 35 or 42, not 40$"):
        vitlab.load(path, img_size=40)


def test_many_files_are_read_in_order_and_an_unreadable_one_stops_them_all_or_is_left_out(tmp_path, checkpoint):
    path, _ = checkpoint
    classifier = vitlab.load(path)
    rng = np.random.default_rng(1)
    files = []
    for index in range(300):  # enough for worker processes to decode them
        files.append(tmp_path / f"{index:03d}.png")
        Image.fromarray((rng.random((20 + index % 9, 28)) * 255).astype(np.uint8)).save(files[-1])
    images = classifier.read_files(files)
    assert len(images) == 300
    for index in (0, 149, 299):
        assert torch.equal(images[index], classifier.to_uint8(files[index]))
    files[150].write_text("not a picture")
    with pytest.raises(ImageError, match="150.png is not an image"):
        classifier.read_files(files)
    read, readable, unreadable = classifier.read_readable_files(files)
    assert read == files[:150] + files[151:] and len(readable) == 299
    assert torch.equal(readable[150], images[151])  # the files after the bad one keep their images
    assert [(path, "150.png is not an image" in reason) for path, reason in unreadable] == [(files[150], True)]
