import pytest

from vitlab.config import RunConfig, apply_overrides, load_run_config, parse_duration, save_yaml
from vitlab.errors import ConfigError, VitlabError
from vitlab.recipes import resolve_run_config


def test_yaml_round_trip_keeps_every_field(tmp_path):
    config = resolve_run_config(preset="cifar-tiny", dataset="mnist", epochs=3, seed=7, overrides=["model.pool=map"])
    save_yaml(config, tmp_path / "c.yaml")
    again = load_run_config(tmp_path / "c.yaml")
    assert again == config
    assert again.model.in_channels == 1  # the data set decides the input channels
    assert again.model.patch_size == 4 and again.model.pool == "map" and again.train.seed == 7


def test_overrides_take_dotted_or_unique_bare_keys():
    config = apply_overrides(RunConfig(), ["train.lr=0.01", "depth=3", "augment=false", "posenc=sincos2d"])
    assert config.train.lr == 0.01 and config.model.depth == 3
    assert config.data.augment is False and config.model.posenc == "sincos2d"


def test_overrides_refuse_unknown_ambiguous_or_mistyped_values():
    with pytest.raises(ConfigError, match="unknown config key"):
        apply_overrides(RunConfig(), ["train.momentum=0.9"])
    with pytest.raises(ConfigError, match="must be an integer"):
        apply_overrides(RunConfig(), ["model.depth=deep"])
    with pytest.raises(ConfigError, match="must be true or false"):
        apply_overrides(RunConfig(), ["data.augment=maybe"])
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides(RunConfig(), ["depth"])


def test_unknown_keys_are_answered_with_the_nearest_spellings_or_the_keys_there_are():
    def message(override: str) -> str:
        with pytest.raises(ConfigError) as caught:
            apply_overrides(RunConfig(), [override])
        return str(caught.value)

    assert message("model.embed_dims=64").endswith("did you mean model.embed_dim?")
    assert message("pach_size=7").endswith("did you mean model.patch_size or train.batch_size?")
    assert message("Depth=3").endswith("did you mean model.depth?")
    listed = message("train.momentum=0.9")
    assert "the keys are train: epochs, batch_size," in listed and "model:" not in listed and "patch_size" not in listed
    assert all(f"{section}: " in message("lr_min=0.1") for section in ("model", "data", "train"))


def test_a_config_files_unknown_keys_are_answered_with_the_nearest_spellings_and_the_known_keys(tmp_path):
    (tmp_path / "run.yaml").write_text("model:\n  embed_dims: 64\n  1: 2\ntrain:\n  epochs: 1\n")
    with pytest.raises(ConfigError) as caught:
        resolve_run_config(config_file=str(tmp_path / "run.yaml"))
    message = str(caught.value)
    assert message.startswith("unknown model key(s): 1, embed_dims (did you mean embed_dim?); known: arch,")


@pytest.mark.parametrize(
    "text,message",
    [
        ("data: {dataset: [a, b]}", "data.dataset must be a single value, got ['a', 'b']"),
        ("data: {dataset: 5}", "unknown dataset '5'"),
        ("data: {dataset: mnist, test_fraction: x}", "data.test_fraction must be a number, got 'x'"),
        ("preset: 5", "must be a preset's name, got 5"),
        ("train: {lr: .nan}", "train.lr must be a finite number, got nan"),
        ("train: {rotate_degrees: .inf}", "unknown train key(s): rotate_degrees"),
        ("data: {rotate_degrees: -.inf}", "data.rotate_degrees must be a finite number, got -inf"),
        ("train: {weight_decay: -0.1}", "train.min_lr and train.weight_decay must not be negative"),
        ("train: {beta2: 1.0}", "train.beta1 and train.beta2 must be in [0, 1), got 0.9 and 1.0"),
    ],
)
def test_a_config_files_values_of_the_wrong_kind_are_refused_in_one_line(tmp_path, text, message):
    (tmp_path / "run.yaml").write_text(text + "\n")
    with pytest.raises(VitlabError) as caught:  # ConfigError, or DataError for a data set that is not one
        resolve_run_config(config_file=str(tmp_path / "run.yaml"))
    assert message in str(caught.value)


def test_layers_apply_in_order_preset_file_flags_overrides(tmp_path):
    (tmp_path / "run.yaml").write_text("preset: mnist-tiny\nmodel:\n  depth: 3\ntrain:\n  epochs: 5\n  lr: 0.004\n")
    config = resolve_run_config(config_file=str(tmp_path / "run.yaml"), epochs=2, overrides=["train.lr=0.001"])
    assert config.preset == "mnist-tiny" and config.model.patch_size == 7
    assert config.model.depth == 3  # the file overrides the preset
    assert config.train.epochs == 2  # the flag overrides the file
    assert config.train.lr == 0.001  # key=value overrides everything


def test_every_shipped_recipe_resolves():
    from vitlab.recipes import recipe_names, recipe_path

    assert recipe_names() == ["cifar10", "cifar100", "fashion-mnist", "folder", "mnist"]
    for name in ("mnist", "fashion-mnist"):
        config = resolve_run_config(config_file=str(recipe_path(name)))
        assert config.data.dataset == name
    with pytest.raises(ConfigError, match="unknown recipe"):
        recipe_path("imagenet")


def test_a_data_set_trains_with_its_recipe_and_another_model_keeps_its_own_shape(tmp_path):
    from vitlab.recipes import recipe_for

    (tmp_path / "pictures" / "cat").mkdir(parents=True)
    assert [recipe_for(name) for name in (None, "mnist", "cifar10", str(tmp_path / "pictures"))] == [
        "mnist",
        "mnist",
        "cifar10",
        "folder",
    ]
    assert recipe_for("svhn") is None
    own = resolve_run_config(recipe="cifar10")
    assert own.preset == "cifar-tiny" and own.model.stem == "conv" and own.model.embed_dim == 128
    named = resolve_run_config(recipe="cifar10", preset="cifar-tiny")  # --model: the preset as it is
    assert named.model.stem == "patch" and named.model.embed_dim == 96 and named.data.hflip
    other = resolve_run_config(recipe="cifar10", preset="Ti/4")
    assert other.model.stem == "patch" and other.model.embed_dim == 192 and other.model.patch_size == 4
    assert other.data.hflip and other.train.ema_decay == own.train.ema_decay == 0.999  # the rest of the recipe
    (tmp_path / "mine.yaml").write_text("train:\n  epochs: 5\n")
    with pytest.raises(ConfigError, match="not both"):
        resolve_run_config(recipe="mnist", config_file=str(tmp_path / "mine.yaml"))


def test_compare_trains_every_model_with_the_data_sets_recipe(tmp_path):
    from vitlab.recipes import resolve_compare_configs

    for name in ("cat", "dog"):
        (tmp_path / "photos" / name).mkdir(parents=True)
    photos = str(tmp_path / "photos")
    names, configs = resolve_compare_configs("cifar-tiny, resnet-small", dataset=photos, epochs=2)
    assert [c.recipe for c in configs] == ["folder"] * 2
    assert [c.preset for c in configs] == names == ["cifar-tiny", "resnet-small"]
    for config in configs:  # mirrored and cropped as photos are, not rotated as digits are
        assert config.data.hflip and not config.data.affine and config.data.crop_padding == 4
        assert config.train.label_smoothing == 0.1 and config.train.epochs == 2
    assert configs[0].model.stem == "patch"  # each preset as it is: the recipe's model section is not taken
    _, digits = resolve_compare_configs("mnist-tiny,resnet-small", dataset=photos, recipe="mnist", epochs=1)
    assert all(c.recipe == "mnist" and c.data.affine and not c.data.hflip for c in digits)
    _, timed = resolve_compare_configs("mnist-tiny,resnet-small", dataset="mnist", time_budget="90s")
    assert all(c.train.time_budget == 90 for c in timed)
    with pytest.raises(ConfigError, match="exactly one of --time-budget or --epochs"):
        resolve_compare_configs("mnist-tiny,resnet-small", dataset="mnist")


def test_folder_and_data_paths_are_saved_absolute(tmp_path, monkeypatch):
    (tmp_path / "pictures" / "cat").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    config = resolve_run_config(dataset="pictures", overrides=["data.data_dir=cache/here"])
    assert config.data.dataset == str(tmp_path.resolve() / "pictures")
    assert config.data.data_dir == str(tmp_path.resolve() / "cache" / "here")
    assert resolve_run_config(dataset="mnist").data.dataset == "mnist"  # a named data set stays a name


@pytest.mark.parametrize(
    "text,seconds",
    [("90", 90), ("90s", 90), ("10m", 600), ("1.5h", 5400), ("1h30m", 5400), ("10 min", 600), ("2 hours", 7200)],
)
def test_durations_are_read_in_the_forms_people_write(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["abc", "10x", "10 20", "1h 5", "1h-5m", "m"])
def test_unreadable_durations_say_how_to_write_one(text):
    with pytest.raises(ConfigError, match="cannot read duration .*; write e.g. 90s, 10m, 1.5h or 1h30m"):
        parse_duration(text)
    with pytest.raises(ConfigError, match="must be positive"):
        parse_duration("0s")
