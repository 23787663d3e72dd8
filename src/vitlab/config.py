"""Run configuration: model, data and training settings as plain dataclasses, with YAML in/out.

A run is fully described by a `RunConfig`; the resolved one is saved beside every run's outputs.
Overrides on the command line are `section.key=value` (or a bare `key=value` when the key
name is unique across sections); values are parsed as YAML scalars.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from vitlab.atomic import atomic_write_text
from vitlab.errors import ConfigError

ARCH_CHOICES = ("vit", "resnet")
POSENC_CHOICES = ("learned", "sincos1d", "sincos2d", "none")
POOL_CHOICES = ("cls", "mean", "map")
HEAD_CHOICES = ("linear", "mlp")
ATTENTION_CHOICES = ("auto", "manual", "sdpa")
STEM_CHOICES = ("patch", "conv")
OPTIMIZER_CHOICES = ("adamw", "adam")
PRECISION_CHOICES = ("auto", "bf16", "fp32")


@dataclass
class ModelConfig:
    """Architecture of a ViT (or the ResNet baseline); plain values, so it round-trips through YAML/JSON.

    For arch="resnet", embed_dim is the base width and depth the residual blocks per stage.
    """

    arch: str = "vit"
    img_size: int = 28
    in_channels: int = 1
    num_classes: int = 10
    patch_size: int = 7
    stem: str = "patch"  # patch: one strided projection; conv: stride-2 3x3 convolutions down to the patch grid
    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    posenc: str = "learned"
    pool: str = "cls"
    class_token: bool = False  # pool=cls always has one; true keeps one with mean/map pooling too (timm's avg models)
    norm_after_pool: bool = False  # final LayerNorm on the pooled vector instead of every token (timm's fc_norm)
    head: str = "linear"
    head_hidden_dim: int = 0  # 0 means embed_dim; only used by head="mlp"
    qkv_bias: bool = True
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    pad_to_patch: bool = False
    attention: str = "auto"
    layer_norm_eps: float = 1e-6

    @property
    def grid_size(self) -> int:
        """Patches per side after optional padding."""
        return math.ceil(self.img_size / self.patch_size)

    @property
    def num_patches(self) -> int:
        """Number of patch tokens."""
        return self.grid_size**2

    @property
    def has_class_token(self) -> bool:
        """Whether a class token is prepended to the patch tokens."""
        return self.pool == "cls" or self.class_token

    @property
    def num_tokens(self) -> int:
        """Tokens the encoder sees: patches plus the class token when there is one."""
        return self.num_patches + int(self.has_class_token)

    @property
    def mlp_dim(self) -> int:
        """Hidden width of each block's MLP."""
        return int(round(self.embed_dim * self.mlp_ratio))

    def validate(self) -> None:
        """Raise ConfigError for any configuration that cannot be built."""
        _check_choice("model.arch", self.arch, ARCH_CHOICES)
        _check_choice("model.posenc", self.posenc, POSENC_CHOICES)
        _check_choice("model.pool", self.pool, POOL_CHOICES)
        _check_choice("model.head", self.head, HEAD_CHOICES)
        _check_choice("model.attention", self.attention, ATTENTION_CHOICES)
        _check_choice("model.stem", self.stem, STEM_CHOICES)
        for name in ("img_size", "in_channels", "num_classes", "patch_size", "embed_dim", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"model.mlp_ratio must be positive, got {self.mlp_ratio}")
        if self.arch != "vit":
            return
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"model.embed_dim={self.embed_dim} is not divisible by model.num_heads={self.num_heads}; "
                "pick a head count that divides the width"
            )
        if self.posenc == "sincos2d" and self.embed_dim % 4:
            raise ConfigError(f"posenc=sincos2d needs model.embed_dim divisible by 4, got {self.embed_dim}")
        if self.posenc == "sincos1d" and self.embed_dim % 2:
            raise ConfigError(f"posenc=sincos1d needs an even model.embed_dim, got {self.embed_dim}")
        if self.patch_size > self.img_size:
            raise ConfigError(f"model.patch_size={self.patch_size} is larger than model.img_size={self.img_size}")
        if self.img_size % self.patch_size and not self.pad_to_patch:
            raise ConfigError(
                f"model.img_size={self.img_size} is not a multiple of model.patch_size={self.patch_size}; "
                "set model.pad_to_patch=true to pad the image, or change one of them"
            )
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ConfigError(
                f"model.stem=conv halves the image per convolution, so model.patch_size must be a power of 2 "
                f"(2, 4, 8, 16), got {self.patch_size}"
            )
        for name in ("dropout", "attention_dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass
class DataConfig:
    """Which data set to train on and how batches are prepared."""

    dataset: str = "mnist"
    data_dir: str = ""  # empty means the packaged copy / default cache
    train_subset: int = 0  # 0 means the whole training split; otherwise N spread evenly over it (quick runs)
    test_fraction: float = 0.2  # image folders without train/ and test/: share held out for testing
    test_subset: int = 0  # as train_subset, for the test split
    augment: bool = True  # master switch for everything below
    affine: bool = True
    rotate_degrees: float = 10.0
    scale_min: float = 0.9
    scale_max: float = 1.1
    translate: float = 0.1  # fraction of the image size
    crop_padding: int = 0  # random crop after zero padding by this many pixels (0: off)
    hflip: bool = False  # left-right mirroring (off for digits)
    randaugment: bool = False  # kornia's RandAugment, 3-channel images only (pip install 'vitlab[augment]')
    randaugment_magnitude: int = 9
    random_erasing: float = 0.0  # probability of erasing a random rectangle
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing of image pairs (0: off)
    cutmix_alpha: float = 0.0  # CutMix; with mixup too, one of the two is picked per batch

    def validate(self) -> None:
        """Raise ConfigError for values that cannot be used."""
        if self.train_subset < 0 or self.test_subset < 0:
            raise ConfigError("data.train_subset and data.test_subset must be 0 (all) or positive")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ConfigError("data.scale_min must be positive and at most data.scale_max")
        if self.crop_padding < 0 or self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ConfigError("data.crop_padding, data.mixup_alpha and data.cutmix_alpha must not be negative")
        if not 0 <= self.random_erasing <= 1:
            raise ConfigError(f"data.random_erasing is a probability in [0, 1], got {self.random_erasing}")
        if not 0 <= self.translate < 0.5:
            raise ConfigError(f"data.translate must be in [0, 0.5), got {self.translate}")


@dataclass
class TrainConfig:
    """Optimisation, schedule, precision and bookkeeping of a training run.

    The defaults are the recipe of `vitlab train` on MNIST (benchmarks/results/mnist_default.md).
    """

    epochs: int = 36
    batch_size: int = 256
    # Each batch in N micro-batches whose gradients add up to the whole batch's: the same optimiser
    # step in about 1/N of the activation memory (BatchNorm, in the conv stem and the CNN, sees micro-batches).
    accumulation_steps: int = 1
    optimizer: str = "adamw"
    lr: float = 5e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    grad_clip: float = 0.0  # 0 disables clipping (it slowed early learning of the small models here)
    precision: str = "auto"
    device: str = "auto"
    threads: int = 0  # 0 means one per available core
    compile: bool = False  # torch.compile the training forward and backward (inductor): slow start, faster steps
    seed: int = 0
    eval_batch_size: int = 1000
    eval_every: int = 1  # evaluate (and checkpoint) every N epochs and after the last one
    time_budget: float = 0.0  # seconds; when set, the run ends on time and train.epochs is ignored
    ema_decay: float = 0.0  # 0 disables the exponential moving average of the weights
    init_from: str = ""  # pretrained weights: a vitlab checkpoint or run, a Hugging Face folder, a timm file
    freeze_until: int = 0  # freeze the embeddings and the first N encoder blocks
    layer_decay: float = 1.0  # learning rate of block i scaled by layer_decay^(depth - i)

    def validate(self) -> None:
        """Raise ConfigError for values that cannot be used."""
        _check_choice("train.optimizer", self.optimizer, OPTIMIZER_CHOICES)
        _check_choice("train.precision", self.precision, PRECISION_CHOICES)
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1 or self.eval_every < 1:
            raise ConfigError("train.batch_size, train.eval_batch_size and train.eval_every must be at least 1")
        if not 1 <= self.accumulation_steps <= self.batch_size:
            raise ConfigError(
                f"train.accumulation_steps must be from 1 to train.batch_size={self.batch_size} "
                f"(each micro-batch holds at least one image), got {self.accumulation_steps}"
            )
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.min_lr < 0 or self.weight_decay < 0:
            raise ConfigError("train.min_lr and train.weight_decay must not be negative")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"train.beta1 and train.beta2 must be in [0, 1), got {self.beta1} and {self.beta2}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 < self.layer_decay <= 1 or self.freeze_until < 0:
            raise ConfigError("train.layer_decay must be in (0, 1] and train.freeze_until not negative")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.time_budget < 0:
            raise ConfigError(f"train.time_budget must not be negative, got {self.time_budget}")
        if self.warmup_epochs < 0 or self.grad_clip < 0 or self.threads < 0:
            raise ConfigError("train.warmup_epochs, train.grad_clip and train.threads must not be negative")


@dataclass
class RunConfig:
    """Everything that defines a run; saved as config.yaml in the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = ""
    recipe: str = ""  # the shipped recipe the run started from ('' for none): said again when it resumes

    def validate(self) -> RunConfig:
        """Validate every section and return self."""
        self.model.validate()
        self.data.validate()
        self.train.validate()
        if self.data.randaugment:  # checked before a run starts, not at its first batch
            from vitlab.data.augment import check_randaugment

            check_randaugment(self.model.in_channels)
        if self.model.arch == "vit" and self.train.freeze_until > self.model.depth:
            raise ConfigError(
                f"train.freeze_until={self.train.freeze_until} is more than the model's {self.model.depth} blocks"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, suitable for YAML or JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        """Build from a nested dict, refusing unknown sections or keys."""
        if not isinstance(raw, dict):
            raise ConfigError("a config must be a mapping with sections model, data and train")
        unknown = set(raw) - {"model", "data", "train", "preset", "recipe"}
        if unknown:
            raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}; use model, data, train")
        return cls(
            model=section_from_dict(ModelConfig, raw.get("model") or {}, "model"),
            data=section_from_dict(DataConfig, raw.get("data") or {}, "data"),
            train=section_from_dict(TrainConfig, raw.get("train") or {}, "train"),
            preset=str(raw.get("preset") or ""),
            recipe=str(raw.get("recipe") or ""),
        )


def with_recipe(recipe: str) -> str:
    """' with the NAME recipe' for the lines and titles that say what a run trained on ('' without one)."""
    return f" with the {recipe} recipe" if recipe else ""


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
# Each section's key names, in field order, as overrides and their errors name them.
_SECTION_KEYS = {section: tuple(f.name for f in fields(cls)) for section, cls in _SECTIONS.items()}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of: {', '.join(choices)}")


def _coerce(section: str, f: dataclasses.Field, value: Any) -> Any:
    """Convert a YAML value to the field's type, with a clear error when it cannot be."""
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "bool": bool, "str": str}[f.type]
    name = f"{section}.{f.name}"
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{name} must be a single value, got {value!r}")
    return "" if value is None else str(value)


def section_from_dict(cls: type, raw: dict[str, Any], section: str) -> Any:
    """Build one config section, refusing unknown keys by name."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {section!r} must be a mapping")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known), key=str)
    if unknown:
        named = []
        for key in unknown:
            close = _near_names(str(key), known)
            named.append(f"{key} (did you mean {' or '.join(close)}?)" if close else str(key))
        raise ConfigError(f"unknown {section} key(s): {', '.join(named)}; known: {', '.join(known)}")
    return cls(**{k: _coerce(section, known[k], v) for k, v in raw.items()})


def apply_overrides(config: RunConfig, overrides: list[str], sections: tuple[str, ...] = tuple(_SECTIONS)) -> RunConfig:
    """Apply `section.key=value` or unique bare `key=value` strings to a config (keys of `sections` only)."""
    raw = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        section, name = _resolve_key(key.strip())
        if section not in sections:
            raise ConfigError(
                f"{key.strip()!r} is a {section} setting; only {' and '.join(sections)} settings apply here"
            )
        raw[section][name] = value
    return RunConfig.from_dict(raw)


def _near_names(name: str, candidates: Iterable[str]) -> list[str]:
    """The few candidates spelled nearest to a mistyped key name, best first (case aside)."""
    return difflib.get_close_matches(name.lower(), list(candidates), n=3, cutoff=0.75)


def _unknown_key(key: str, section: str | None) -> ConfigError:
    """The error for a key that no section (or not `section`) has: the nearest spellings, else the
    keys there are, so that a mistyped key can be mended from the message alone."""
    sections = [section] if section else list(_SECTION_KEYS)
    bare = key.split(".", 1)[1] if section else key
    close = _near_names(bare, [n for s in sections for n in _SECTION_KEYS[s]])
    if close:  # a name in two sections would be offered in both
        offers = [f"{s}.{n}" for n in dict.fromkeys(close) for s in sections if n in _SECTION_KEYS[s]]
        return ConfigError(f"unknown config key {key!r}; did you mean {' or '.join(offers)}?")
    listed = "; ".join(f"{s}: {', '.join(_SECTION_KEYS[s])}" for s in sections)
    return ConfigError(f"unknown config key {key!r}; the keys are {listed}")


def _resolve_key(key: str) -> tuple[str, str]:
    if "." in key:
        section, name = key.split(".", 1)
        if section not in _SECTIONS:
            raise ConfigError(f"unknown config section {section!r} in {key!r}; use model, data or train")
        if name not in _SECTION_KEYS[section]:
            raise _unknown_key(key, section)
        return section, name
    owners = [s for s, names in _SECTION_KEYS.items() if key in names]
    if not owners:
        raise _unknown_key(key, None)
    if len(owners) > 1:
        raise ConfigError(f"config key {key!r} is ambiguous; write one of {', '.join(f'{s}.{key}' for s in owners)}")
    return owners[0], key


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with one-line errors for missing or broken files."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping with sections model, data, train")
    return raw


def load_run_config(path: str | Path) -> RunConfig:
    """A config.yaml that save_yaml wrote (or a user's YAML file), read back into a RunConfig."""
    return RunConfig.from_dict(load_yaml(path))


def save_yaml(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: a resumed run rewrites it)."""
    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))


DURATION_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
}
DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")


def parse_duration(text: str) -> float:
    """Seconds from '90', '90s', '10m', '1.5h', '1h30m' or '10 min' (a bare number is seconds)."""
    value = text.strip().lower()
    seconds, position = 0.0, 0
    while position < len(value):
        part = DURATION_PART.match(value, position)
        bare = part is not None and not part.group(2) and (position > 0 or part.end() < len(value))
        if part is None or bare or (part.group(2) and part.group(2) not in DURATION_UNITS):
            raise ConfigError(f"cannot read duration {text!r}; write e.g. 90s, 10m, 1.5h or 1h30m")
        seconds += float(part.group(1)) * DURATION_UNITS.get(part.group(2), 1.0)
        position = part.end()
    if seconds <= 0:
        raise ConfigError(f"duration {text!r} must be positive")
    return seconds
