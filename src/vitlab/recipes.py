"""Assembling a run's config from its layers: defaults < preset < config file or recipe < flags < key=value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vitlab.config import DataConfig, RunConfig, apply_overrides, load_yaml, parse_duration, section_from_dict
from vitlab.data.datasets import input_shape
from vitlab.data.folders import is_image_folder, same_folder
from vitlab.errors import ConfigError
from vitlab.models.registry import DEFAULT_PRESET, model_config

RECIPE_FOLDER = Path(__file__).parent / "recipe_files"


def recipe_names() -> list[str]:
    """Names of the shipped recipes (src/vitlab/recipe_files/*.yaml)."""
    return sorted(p.stem for p in RECIPE_FOLDER.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The YAML file of a shipped recipe, with a clear error for an unknown name."""
    path = RECIPE_FOLDER / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown recipe {name!r}; shipped recipes: {', '.join(recipe_names())}")
    return path


def recipe_for(dataset: str | None) -> str | None:
    """The shipped recipe a new run on `dataset` starts from when it is given no --recipe or --config:
    the named data set's own (MNIST's without a name), "folder" for an image folder, else none."""
    name = dataset or "mnist"
    if is_image_folder(name):
        return "folder"
    return name if name in recipe_names() else None


def resolve_run_config(
    *,
    preset: str | None = None,
    recipe: str | None = None,
    config_file: str | None = None,
    dataset: str | None = None,
    epochs: int | None = None,
    time_budget: str | None = None,
    seed: int | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """The validated RunConfig of a new run; the model's channels and classes follow the data set.

    A recipe is a shipped config file whose model section was chosen with its own preset: given a
    `preset` (--model), that model runs as it is and the recipe brings only its data and training settings.
    """
    if recipe and config_file:
        raise ConfigError("give --recipe or --config, not both (a recipe is a shipped config file)")
    source = str(recipe_path(recipe)) if recipe else config_file
    raw = load_yaml(source) if source else {}
    if not isinstance(raw.get("model", {}), dict):
        raise ConfigError(f"section 'model' of {source} must be a mapping")
    if recipe and preset:
        raw.pop("model", None)
    name = preset or raw.get("preset") or DEFAULT_PRESET
    if not isinstance(name, str):
        raise ConfigError(f"preset in {source} must be a preset's name, got {name!r}")
    # The data section is read (and its values checked) first: the model's channels and classes follow it.
    data_name = dataset or section_from_dict(DataConfig, raw.get("data") or {}, "data").dataset
    channels, classes = input_shape(data_name)
    # The preset fixes the architecture; the data set fixes what goes in and comes out.
    base = model_config(name, in_channels=channels, num_classes=classes)
    merged = {"model": dataclasses.asdict(base) | raw.get("model", {})}
    config = RunConfig.from_dict({**raw, **merged, "preset": name, "recipe": recipe or ""})
    config.data.dataset = data_name
    return _finish(config, epochs, time_budget, seed, overrides)


def resolve_compare_configs(
    models: str,
    *,
    dataset: str,
    recipe: str | None = None,
    epochs: int | None = None,
    time_budget: str | None = None,
    seed: int | None = None,
    overrides: list[str] | None = None,
) -> tuple[list[str], list[RunConfig]]:
    """The presets `compare` trains (`models`: "a,b,...") and their configs, which share one shipped recipe.

    Every model trains with the data set's recipe (its augmentation and schedule) unless given another, as
    `train` would, and every config is resolved before any training, so a typo fails fast.
    """
    if bool(time_budget) == bool(epochs):
        raise ConfigError("give exactly one of --time-budget or --epochs, so every model gets the same budget")
    names = [name.strip() for name in models.split(",") if name.strip()]
    if len(names) < 2:
        raise ConfigError("--models needs at least two presets separated by commas, e.g. mnist-small,resnet-small")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"--models names {', '.join(twice)} more than once; each model is trained once")
    recipe = recipe or recipe_for(dataset)
    configs = [
        resolve_run_config(
            preset=name,
            recipe=recipe,
            dataset=dataset,
            epochs=epochs,
            time_budget=time_budget,
            seed=seed,
            overrides=overrides,
        )
        for name in names
    ]
    return names, configs


def _finish(
    config: RunConfig,
    epochs: int | None,
    time_budget: str | None,
    seed: int | None,
    overrides: list[str] | None,
) -> RunConfig:
    """Apply the --epochs and --seed flags, then key=value overrides, then --time-budget ('10m'), then validate."""
    if epochs is not None:
        config.train.epochs = epochs
    if seed is not None:
        config.train.seed = seed
    budget = [f"train.time_budget={parse_duration(time_budget)}"] if time_budget else []
    config = apply_overrides(config, [*(overrides or []), *budget]).validate()
    # Paths are saved absolute, so the run resumes and its checkpoints evaluate from any working directory.
    if is_image_folder(config.data.dataset):
        config.data.dataset = str(Path(config.data.dataset).expanduser().resolve())
    if config.data.data_dir:
        config.data.data_dir = str(Path(config.data.data_dir).expanduser().resolve())
    return config


def resolve_finetune_config(
    *,
    source: str,
    dataset: str,
    img_size: int | None = None,
    freeze_until: int = 0,
    layer_decay: float = 1.0,
    epochs: int | None = None,
    time_budget: str | None = None,
    seed: int | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """A run that starts from `source`'s architecture and weights, with a head for `dataset`'s classes.

    The data set's recipe brings its augmentation (mirroring photos, not rotating them); the learning
    rate, schedule and epochs stay fine-tuning's own.
    """
    from vitlab.engine.finetune import read_source

    pretrained = read_source(source)
    _, classes = input_shape(dataset)
    model = dataclasses.replace(pretrained.config, num_classes=classes, img_size=img_size or pretrained.config.img_size)
    recipe = recipe_for(dataset)
    data = (load_yaml(recipe_path(recipe)).get("data") or {}) if recipe else {}
    config = RunConfig.from_dict({"data": data})
    config.model, config.preset = model, f"finetune:{source}"
    config.data.dataset = dataset
    config.train.init_from = str(source)
    config.train.freeze_until = freeze_until
    config.train.layer_decay = layer_decay
    if pretrained.test_split and same_folder(pretrained.test_split[0], dataset):
        # The same image folder: hold out the images the source held out (it trained on the others), unless
        # --seed or data.test_fraction say otherwise.
        config.data.test_fraction, config.train.seed = pretrained.test_split[1:]
    return _finish(config, epochs, time_budget, seed, overrides)
