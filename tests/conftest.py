"""Shared fixtures: tiny models and small slices of the packaged MNIST."""

from __future__ import annotations

import pytest
import torch

from vitlab.data.sources import ImageDataset, load_split


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch):
    # Downloads go only where a test points them: by default a closed local port, never the internet.
    monkeypatch.setenv("VITLAB_DATA_MIRROR", "http://127.0.0.1:9/")


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests use tiny models; two threads is what CI has.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def mnist_test() -> ImageDataset:
    """The real MNIST test split (10,000 images), read once per session."""
    return load_split("mnist", "test")
