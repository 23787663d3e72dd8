"""Assembling a run's config from its layers: defaults < preset < config file < flags < key=value."""

from __future__ import annotations

import dataclasses

from vitlab.config import RunConfig, apply_overrides, load_yaml
from vitlab.data.datasets import input_shape
from vitlab.errors import ConfigError
from vitlab.models.registry import DEFAULT_PRESET, model_config


def resolve_run_config(
    *,
    preset: str | None = None,
    config_file: str | None = None,
    dataset: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """The validated RunConfig of a new run; the model's channels and classes follow the data set."""
    raw = load_yaml(config_file) if config_file else {}
    if not isinstance(raw.get("model", {}), dict):
        raise ConfigError(f"section 'model' of {config_file} must be a mapping")
    name = preset or raw.get("preset") or DEFAULT_PRESET
    data_name = dataset or (raw.get("data") or {}).get("dataset") or "mnist"
    channels, classes = input_shape(data_name)
    # The preset fixes the architecture; the data set fixes what goes in and comes out.
    base = model_config(name, in_channels=channels, num_classes=classes)
    merged = {"model": dataclasses.asdict(base) | raw.get("model", {})}
    config = RunConfig.from_dict({**raw, **merged, "preset": name})
    config.data.dataset = data_name
    if epochs is not None:
        config.train.epochs = epochs
    if seed is not None:
        config.train.seed = seed
    return apply_overrides(config, overrides or []).validate()
