"""The `vitlab` command: parses arguments, calls the layers below, prints results. No logic of its own."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from vitlab.errors import ConfigError, ImageError, VitlabError

if TYPE_CHECKING:  # the config and engine modules are imported only by the commands that need them
    from vitlab.config import RunConfig
    from vitlab.engine.train import EpochStats, Trainer, TrainResult


def _print_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")


# ----- train -------------------------------------------------------------------------------------
def _new_run_config(args: argparse.Namespace) -> tuple[RunConfig, str]:
    """The resolved config of a new `train`/`finetune` run and a label for its default folder name."""
    from vitlab.recipes import recipe_for, resolve_run_config

    if args.command == "finetune":
        from vitlab.recipes import resolve_finetune_config

        config = resolve_finetune_config(
            source=args.source,
            dataset=args.dataset,
            img_size=args.img_size,
            freeze_until=args.freeze_until,
            layer_decay=args.layer_decay,
            epochs=args.epochs,
            time_budget=args.time_budget,
            seed=args.seed,
            overrides=args.overrides,
        )
        label = f"finetune-{Path(args.dataset).name}"
    else:
        # A data set with a shipped recipe trains with it unless told otherwise.
        recipe = args.recipe or (None if args.config else recipe_for(args.dataset))
        config = resolve_run_config(
            preset=args.model,
            recipe=recipe,
            config_file=args.config,
            dataset=args.dataset,
            epochs=args.epochs,
            time_budget=args.time_budget,
            seed=args.seed,
            overrides=args.overrides,
        )
        label = Path(config.data.dataset).name
    return config, label


def _default_run_dir(label: str) -> Path:
    """runs/LABEL-YYYYmmdd-HHMMSS, for a new run given no --out."""
    return Path("runs") / time.strftime(f"{label}-%Y%m%d-%H%M%S")


def cmd_train(args: argparse.Namespace) -> int:
    from vitlab.config import with_recipe
    from vitlab.engine.distributed import end_process, init_process_group, shutdown, world_from_environment
    from vitlab.engine.runtime import precision_name, resolve_device
    from vitlab.engine.train import start_new_run, trainer_for_resume
    from vitlab.interrupts import stopped_by_ctrl_c
    from vitlab.launch import interrupted_message, launched_worker
    from vitlab.terminal import counted

    world = world_from_environment()
    refuse_changes_on_resume(args)
    if args.nproc > 1 and not world.distributed:
        return launch_processes(args)
    if args.resume:
        run_dir = Path(args.resume)
        trainer = trainer_for_resume(run_dir, epochs=args.epochs)
    else:
        config, label = _new_run_config(args)
        run_dir = Path(args.out) if args.out else _default_run_dir(label)
        init_process_group(world, resolve_device(config.train.device).type)
        trainer = start_new_run(config, run_dir)
    cfg = trainer.config
    quiet = args.quiet or not world.is_main
    if not args.json and world.is_main:
        model = cfg.model
        shape = f"width {model.embed_dim}, depth {model.depth}"
        if model.arch == "vit":  # the preset's name alone hides what a recipe or override changed
            shape = f"patch {model.patch_size}{' after a conv stem' if model.stem == 'conv' else ''}, {shape}"
        workers = counted(trainer.threads, "thread")
        if world.size > 1:
            workers = f"{world.size} processes x {workers}"
        length = f"{cfg.train.time_budget:.0f} s" if cfg.train.time_budget else counted(cfg.train.epochs, "epoch")
        trained_on = cfg.data.dataset + with_recipe(cfg.recipe)
        print(
            f"training {cfg.preset or 'custom'} {model.arch} ({shape}) on {trained_on} "
            f"({len(trainer.train_set)} train / {len(trainer.test_set)} test images) for {length}; "
            f"device {trainer.device}, {precision_name(trainer.dtype)}, {workers}; run dir {run_dir}",
            file=sys.stderr,
        )
    for note in trainer.notes if world.is_main else []:
        print(f"vitlab: note: {note}", file=sys.stderr)
    try:
        if world.is_main and fraction_trained(trainer) >= 1.0:
            more = "a new run" if cfg.train.time_budget else f"--epochs above {cfg.train.epochs}"
            print(f"vitlab: note: {run_dir} has finished: nothing left to train ({more} trains on)", file=sys.stderr)
        result = train_with_progress(trainer, quiet, log_to_board=world.is_main)
    except (KeyboardInterrupt, Exception) as exc:
        if not stopped_by_ctrl_c(exc):
            raise
        if world.is_main and not launched_worker():
            print(interrupted_message(run_dir), file=sys.stderr)
        return 130
    shutdown(world)
    if not world.is_main:
        return end_process(world)
    report_path = None
    if not args.no_report:
        from vitlab.report.run_report import build_report

        report_path = build_report(run_dir)
    summary = {
        "run_dir": str(run_dir),
        "report": str(report_path) if report_path else None,
        "epochs": result.epochs,
        "test_accuracy": result.final.accuracy,
        "test_loss": result.final.loss,
        "best_test_accuracy": result.best_accuracy,
        "train_seconds": round(result.seconds, 2),
    }
    if args.json:
        _print_json(summary)
    else:
        print(
            f"test accuracy {result.final.accuracy:.2%} (best {result.best_accuracy:.2%}), "
            f"{result.seconds:.0f}s of training; checkpoints in {run_dir / 'checkpoints'}"
        )
    return end_process(world)


def fraction_trained(trainer: Trainer) -> float:
    """How much of its run a trainer has behind it before it starts (1.0: a finished run resumed as it was)."""
    return trainer.fraction_done(trainer.start_epoch * trainer.steps_per_epoch, trainer.elapsed_before)


def train_with_progress(trainer: Trainer, quiet: bool = False, log_to_board: bool = True) -> TrainResult:
    """Run a trainer as `vitlab train` shows it: a progress bar over the run (unless `quiet`, or with nothing
    left to train), one line per finished epoch, and TensorBoard events in its run dir (with `log_to_board`)."""
    from vitlab.report.progress import TrainingProgress
    from vitlab.report.tensorboard import TensorBoardLogger

    train = trainer.config.train
    total_epochs = None if train.time_budget else train.epochs
    start = fraction_trained(trainer)
    quiet = quiet or start >= 1.0  # no bar for no steps
    board = TensorBoardLogger(trainer.run_dir) if log_to_board else None

    def on_epoch(stats: EpochStats) -> None:
        bar.on_epoch(stats)
        if board is not None:
            board.on_epoch(stats)

    with TrainingProgress(total_epochs, start, enabled=not quiet) as bar:
        result = trainer.run(
            on_progress=bar.on_step if not quiet else None,
            on_epoch=on_epoch,
            on_evaluation=bar.on_evaluation if not quiet else None,
        )
    if board is not None:
        board.close()
    return result


# What a resumed run keeps as it was set up, by the option that would otherwise change it.
FIXED_ON_RESUME = {
    "dataset": "--dataset",
    "model": "--model",
    "config": "--config",
    "recipe": "--recipe",
    "time_budget": "--time-budget",
    "out": "--out",
    "seed": "--seed",
    "overrides": "key=value overrides",
}


def refuse_changes_on_resume(args: argparse.Namespace) -> None:
    """--resume continues a run exactly as it was set up: options that would change it are an error, not ignored."""
    if not args.resume:
        return
    given = [flag for name, flag in FIXED_ON_RESUME.items() if getattr(args, name, None)]
    if given:
        raise ConfigError(
            f"--resume continues a run as it was set up: {', '.join(given)} cannot change it (--epochs can)"
        )


def launch_processes(args: argparse.Namespace) -> int:
    """Re-run this command as --nproc training processes, after the checks that need doing only once."""
    from vitlab.engine.distributed import check_a_gpu_each
    from vitlab.engine.runtime import resolve_device
    from vitlab.engine.train import check_new_run_dir, saved_config_path
    from vitlab.launch import run_processes

    label = ""
    if args.resume:
        saved_config_path(Path(args.resume))
    else:
        config, label = _new_run_config(args)
        if args.out:
            check_new_run_dir(Path(args.out))
        check_a_gpu_each(args.nproc, resolve_device(config.train.device).type)
    argv = list(sys.argv[1:])
    while "--nproc" in argv:  # drop "--nproc N" / "--nproc=N": the children are the processes
        index = argv.index("--nproc")
        del argv[index : index + 2]
    argv = [a for a in argv if not a.startswith("--nproc=")]
    run_dir = Path(args.resume or args.out or _default_run_dir(label))
    if not args.out and not args.resume:  # every process must write to the same run directory
        argv += ["--out", str(run_dir)]
    return run_processes(argv, args.nproc, run_dir)


def _report_error(message: str) -> None:
    """A user error: one line on stderr, or, in a worker of --nproc, a file for the launcher to print."""
    from vitlab.launch import leave_error_for_launcher

    if not leave_error_for_launcher(message):
        print(f"vitlab: error: {message}", file=sys.stderr)


# ----- eval --------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from vitlab.config import DataConfig
    from vitlab.data.datasets import input_shape, open_dataset
    from vitlab.engine.checkpoint import load_checkpoint, scoring_precision
    from vitlab.engine.evaluate import batched_logits, evaluate, scores_from_logits
    from vitlab.engine.runtime import autocast_dtype, configure_cpu, precision_name, resolve_device
    from vitlab.terminal import counting_bar

    exported, dtype = None, None  # an ONNX file runs in fp32
    if Path(args.checkpoint).suffix == ".onnx":
        from vitlab.export import OnnxClassifier, onnx_device

        onnx_device(args.device)
        if args.precision not in (None, "fp32"):
            raise ConfigError("an ONNX file runs in fp32 through onnxruntime; drop --precision")
        exported = OnnxClassifier(args.checkpoint)
        metadata = exported.metadata
        channels, img_size, num_classes = exported.channels, exported.img_size, exported.num_classes
        if "mean" not in metadata or "std" not in metadata:
            raise ConfigError(f"{args.checkpoint} carries no normalisation in its metadata; export it with vitlab")
    else:
        model, metadata = load_checkpoint(args.checkpoint)
        device = resolve_device(args.device, "--device")  # a device that is not there fails before data is read
        dtype = autocast_dtype(args.precision or scoring_precision(metadata), device, "--precision")
        channels, img_size, num_classes = model.config.in_channels, model.config.img_size, model.config.num_classes
    name = args.dataset or metadata.get("dataset", "mnist")
    _, classes = input_shape(name)  # known before a named data set is downloaded or a folder decoded
    if classes != num_classes:
        raise ConfigError(f"the model has {num_classes} classes but {name} has {classes}")
    fraction, seed = trained_test_split(metadata, name, args.checkpoint)
    data = open_dataset(
        DataConfig(dataset=name, data_dir=args.data_dir or trained_data_dir(metadata, name), test_fraction=fraction),
        channels,
        img_size,
        seed,
        splits=("test",),
    )
    for note in data.notes:  # files of the folder left out of the score
        print(f"vitlab: note: {note}", file=sys.stderr)
    trained_state = metadata.get("folder_state")
    if trained_state and data.folder_state and data.folder_state != trained_state and is_trained_folder(metadata, name):
        print(
            f"vitlab: note: {name} has changed since the model trained on it; its test split changed with it "
            "and may include images the model trained on",
            file=sys.stderr,
        )
    trained_names = list(metadata.get("class_names") or data.class_names)
    if trained_names != list(data.class_names):
        print(
            f"vitlab: note: the model was trained on classes {', '.join(trained_names[:3])}, ... and {name} has "
            f"{', '.join(data.class_names[:3])}, ...: its scores match class numbers, not names",
            file=sys.stderr,
        )
    normalisation = {"mean": metadata["mean"], "std": metadata["std"]}
    with counting_bar("scoring", len(data.test)) as advance:  # a large model takes minutes over 10,000 images
        if exported is not None:
            logits = batched_logits(
                exported.logits,
                data.test.images,
                **normalisation,
                img_size=img_size,
                channels=channels,
                num_classes=num_classes,
                on_batch=advance,
            )
            scores = scores_from_logits(logits, data.test.labels)
        else:
            configure_cpu()
            model.to(device)
            scores = evaluate(
                model, data.test.images, data.test.labels, **normalisation, device=device, dtype=dtype, on_batch=advance
            )
    payload = {
        "checkpoint": str(args.checkpoint),
        "dataset": name,
        "precision": precision_name(dtype),
        **scores.to_dict(data.class_names),
    }
    if args.json:
        _print_json(payload)
        return 0
    print(
        f"{name} test: accuracy {scores.accuracy:.2%}  "
        + (f"top-5 {scores.top5_accuracy:.2%}  " if scores.top5_accuracy is not None else "")
        + f"loss {scores.loss:.4f}  ({scores.num_examples} images, {payload['precision']})"
    )
    for class_name, accuracy in payload["per_class_accuracy"].items():
        print(f"  {class_name:>12}  {accuracy:.2%}")
    return 0


def trained_test_split(metadata: dict, dataset: str, checkpoint: str) -> tuple[float, int]:
    """(test fraction, seed) that split `dataset` when the model trained on it; the defaults for another one.

    An image folder without train/ and test/ is split at random: scored on another draw, the test images
    would include ones the model trained on."""
    from vitlab.config import DataConfig
    from vitlab.engine.checkpoint import recorded_test_split

    default = DataConfig().test_fraction, 0
    if not is_trained_folder(metadata, dataset):
        return default
    recorded = recorded_test_split(metadata, checkpoint)
    if recorded is None:
        print(
            "vitlab: note: this checkpoint does not say how its image folder was split; scoring the default "
            f"split ({default[0]:.0%} held out, seed 0), which may include images it trained on",
            file=sys.stderr,
        )
    return recorded or default


def is_trained_folder(metadata: dict, dataset: str) -> bool:
    """Whether `dataset` is the image folder the checkpoint's run trained on."""
    from vitlab.data.folders import same_folder

    return same_folder(metadata.get("dataset", ""), dataset)


def trained_data_dir(metadata: dict, dataset: str) -> str:
    """Where the run that wrote this checkpoint read `dataset` from, if that folder is still there; else ""
    (the default place)."""
    recorded = metadata.get("data_dir", "") if metadata.get("dataset") == dataset else ""
    return recorded if recorded and Path(recorded).is_dir() else ""


# ----- predict -----------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    from vitlab.api import load

    classifier = load(args.checkpoint, img_size=args.img_size, device=args.device)
    named = image_paths(args.images)
    # Every file is read before any is classified; one that cannot be read is reported and left out,
    # and the command ends in error after classifying the others (as `file` or `cp` go on past a bad one).
    paths, items, unreadable = classifier.read_readable_files(named)
    for _, reason in unreadable:
        print(f"vitlab: error: {reason}", file=sys.stderr)
    if args.invert:
        items = [255 - item for item in items]
    predictions = classifier.predict(items, top_k=args.top_k) if items else []
    results = [
        {
            "image": str(path),
            "top_k": [
                {"class": label, "index": index, "probability": probability}
                for label, index, probability in zip(p.labels, p.indices, p.probabilities)
            ],
        }
        for path, p in zip(paths, predictions)
    ]
    if args.json:
        _print_json(
            {
                "checkpoint": str(args.checkpoint),
                "predictions": results,
                "unreadable": [{"image": str(path), "error": reason} for path, reason in unreadable],
            }
        )
    else:
        for item in results:
            ranked = ", ".join(f"{entry['class']} {entry['probability']:.1%}" for entry in item["top_k"])
            print(f"{item['image']}: {ranked}")
    if unreadable:
        if len(named) > 1:  # a single file's own error says it all
            print(
                f"vitlab: error: {len(unreadable)} of {len(named)} files could not be read and were left out",
                file=sys.stderr,
            )
        return 2
    return 0


def image_paths(arguments: list[str]) -> list[str]:
    """The image files named on the command line, a folder standing for every image file under it."""
    from vitlab.data.folders import describe_other_files, files_under
    from vitlab.data.images import IMAGE_FORMATS

    paths = []
    for argument in arguments:
        if Path(argument).is_dir():
            found, others = files_under(Path(argument))
            if not found:
                raise ImageError(f"{argument} is a folder with no {IMAGE_FORMATS} file under it")
            if others:
                print(f"vitlab: note: {argument}: {describe_other_files(others)}", file=sys.stderr)
            paths += found
        else:
            paths.append(argument)
    return paths


# ----- export ------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from vitlab.engine.checkpoint import load_checkpoint, resolve_checkpoint
    from vitlab.export import export_onnx, export_torchscript

    if args.fixed_batch and args.format != "onnx":
        raise ConfigError("--fixed-batch applies to ONNX files; a TorchScript file takes any batch")
    model, metadata = load_checkpoint(args.checkpoint)
    source = resolve_checkpoint(args.checkpoint)
    suffix = ".onnx" if args.format == "onnx" else ".pt"
    out = Path(args.out) if args.out else source.with_suffix(suffix)
    if args.format == "onnx":
        result = export_onnx(model, metadata, out, args.fixed_batch)
    else:
        result = export_torchscript(model, out)
    if args.json:
        _print_json({"path": str(result.path), "format": result.format, "max_abs_diff": result.max_abs_diff})
    else:
        check = "onnxruntime" if args.format == "onnx" else "the traced module"
        print(f"wrote {result.path}; {check} matches PyTorch to {result.max_abs_diff:.1e} (max abs diff)")
    return 0


# ----- info --------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from vitlab.models.flops import forward_flops, training_flops
    from vitlab.models.registry import DEFAULT_PRESET, build_model, model_config

    if args.presets:
        if args.items or args.model:
            raise ConfigError("--presets lists every preset; give it alone (or --model NAME for one in full)")
        return _print_presets(args.json)
    # key=value items reshape the preset (`vitlab info --model S/16 img_size=32`); any other item is a run.
    overrides = [item for item in args.items if "=" in item and not Path(item).exists()]
    checkpoints = [item for item in args.items if item not in overrides]
    if len(checkpoints) > 1:
        raise ConfigError(f"give one run or checkpoint, got {len(checkpoints)}: {' '.join(checkpoints)}")
    if checkpoints and (args.model or overrides):
        raise ConfigError("a run or checkpoint has its own model: give it, or --model and key=value settings")
    if checkpoints:
        from vitlab.engine.checkpoint import load_checkpoint

        model, metadata = load_checkpoint(checkpoints[0])
        source = checkpoints[0]
    else:
        from vitlab.config import RunConfig, apply_overrides

        name = args.model or DEFAULT_PRESET
        config = apply_overrides(RunConfig(model=model_config(name)), overrides, sections=("model",)).model
        config.validate()
        model, metadata = build_model(config), {}
        source = f"preset {name}" + "".join(f" {item}" for item in overrides)
    config = model.config
    payload = {
        "source": source,
        "parameters": sum(p.numel() for p in model.parameters()),
        "forward_flops_per_image": forward_flops(config),
        "training_flops_per_image": training_flops(config),
        "model": {key: getattr(config, key) for key in config.__dataclass_fields__},
    }
    for key in ("dataset", "class_names", "epoch", "metrics"):
        if key in metadata:
            payload[key] = metadata[key]
    if args.json:
        _print_json(payload)
        return 0
    print(f"{source}")
    print(f"  parameters        {payload['parameters']:,}")
    print(f"  forward FLOPs     {flops_text(payload['forward_flops_per_image'])} per image")
    print(f"  training FLOPs    {flops_text(payload['training_flops_per_image'])} per image (3x forward)")
    if config.arch == "vit":
        grid = f"{config.grid_size}x{config.grid_size} patches of {config.patch_size}px"
        print(f"  tokens            {config.num_tokens} ({grid}{' + class token' if config.has_class_token else ''})")
        print(
            f"  architecture      ViT: width {config.embed_dim}, depth {config.depth}, heads {config.num_heads}, "
            f"MLP {config.mlp_dim}, posenc {config.posenc}, pool {config.pool}, head {config.head}"
        )
    else:
        print(f"  architecture      ResNet: base width {config.embed_dim}, {config.depth} blocks per stage, 3 stages")
    print(f"  input             {config.in_channels}x{config.img_size}x{config.img_size}, {config.num_classes} classes")
    for key in ("dataset", "epoch"):
        if key in payload:
            print(f"  {key:<17} {payload[key]}")
    for name, value in payload.get("metrics", {}).items():
        shown = f"{value:.2%}" if "accuracy" in name else f"{value:.4f}"
        print(f"  {name.replace('_', ' '):<17} {shown}")
    if not (checkpoints or args.model or overrides):
        print("(every preset: vitlab info --presets)")
    return 0


def _print_presets(as_json: bool) -> int:
    """Every preset in one table: its shape, input, tokens, parameters and FLOPs per image."""
    import torch

    from vitlab.models.flops import forward_flops
    from vitlab.models.registry import DEFAULT_PRESET, build_model, model_config, preset_names

    rows = []
    for name in preset_names():
        config = model_config(name)
        with torch.device("meta"):  # shapes alone: no memory for the weights, no time initialising them
            parameters = sum(p.numel() for p in build_model(config).parameters())
        if config.arch == "vit":
            shape = f"ViT patch {config.patch_size}, width {config.embed_dim}, depth {config.depth}, heads {config.num_heads}"
        else:
            shape = f"ResNet base width {config.embed_dim}, {config.depth} blocks per stage"
        rows.append(
            {
                "preset": name,
                "default": name == DEFAULT_PRESET,
                "model": shape,
                "input": f"{config.in_channels}x{config.img_size}x{config.img_size}",
                "tokens": config.num_tokens if config.arch == "vit" else None,
                "parameters": parameters,
                "forward_flops_per_image": forward_flops(config),
            }
        )
    if as_json:
        _print_json({"presets": rows})
        return 0
    table = [["preset", "model", "input", "tokens", "parameters", "forward FLOPs"]]
    for row in rows:
        table.append(
            [
                row["preset"] + (" *" if row["default"] else ""),
                row["model"],
                row["input"],
                "-" if row["tokens"] is None else str(row["tokens"]),
                f"{row['parameters']:,}",
                flops_text(row["forward_flops_per_image"]),
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print(
            "  ".join(
                cell.rjust(width) if i >= 3 else cell.ljust(width) for i, (cell, width) in enumerate(zip(line, widths))
            ).rstrip()
        )
    print(
        "* the default. Parameters for 10 classes; the data set sets the input channels and classes, and key=value "
        "settings change the rest (vitlab info --model NAME [key=value ...] for one in full)."
    )
    return 0


def flops_text(flops: float) -> str:
    """'5.83 M' or '8.62 G': three significant figures or so, in the unit that keeps them short."""
    return f"{flops / 1e9:,.2f} G" if flops >= 1e9 else f"{flops / 1e6:,.2f} M"


# ----- report and attention --------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    from vitlab.report.run_report import build_report

    path = build_report(args.run_dir)
    if args.json:
        _print_json({"report": str(path)})
    else:
        print(f"report written to {path}")
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    from vitlab.engine.checkpoint import load_checkpoint
    from vitlab.report.attention_maps import write_attention_maps

    model, metadata = load_checkpoint(args.checkpoint)
    figures = write_attention_maps(model, metadata, image_paths(args.images), Path(args.out), args.layer, args.invert)
    if args.json:
        _print_json({"files": [str(p) for p in figures.files], "predicted": figures.predicted})
    else:
        print(f"wrote {len(figures.files)} PNG files to {args.out}")
    return 0


# ----- compare ----------------------------------------------------------------------------------
def compare_run_configs(args: argparse.Namespace) -> tuple[list[str], list[RunConfig]]:
    """The presets of a `compare` command and their resolved configs (config.recipe: the recipe they share)."""
    from vitlab.recipes import resolve_compare_configs

    return resolve_compare_configs(
        args.models,
        dataset=args.dataset,
        recipe=args.recipe,
        epochs=args.epochs,
        time_budget=args.time_budget,
        seed=args.seed,
        overrides=args.overrides,
    )


def cmd_compare(args: argparse.Namespace) -> int:
    from vitlab.config import with_recipe
    from vitlab.engine.compare import continues_run, run_contender
    from vitlab.engine.train import check_new_run_dir
    from vitlab.interrupts import stopped_by_ctrl_c
    from vitlab.report.compare import write_comparison
    from vitlab.report.run_report import build_report

    names, configs = compare_run_configs(args)
    label = Path(configs[0].data.dataset).name
    out = Path(args.out) if args.out else Path("runs") / time.strftime(f"compare-{label}-%Y%m%d-%H%M%S")
    run_dirs = [out / name.replace("/", "-") for name in names]
    # Checked before any training: the same command again continues a stopped comparison; other settings fail.
    continuing = [continues_run(run_dir, config, name) for name, config, run_dir in zip(names, configs, run_dirs)]
    for name, run_dir, resumes in zip(names, run_dirs, continuing):
        if not resumes:
            try:
                check_new_run_dir(run_dir)
            except ConfigError:
                raise ConfigError(f"{out} already holds a run of {name}; pick another --out") from None
    results, noted = [], set()

    def train(trainer: Trainer) -> TrainResult:
        for note in trainer.notes:
            if note not in noted:  # the data's notes: once, not once per model
                print(f"vitlab: note: {note}", file=sys.stderr)
                noted.add(note)
        return train_with_progress(trainer, quiet=args.quiet)

    try:
        for name, config, run_dir, resumes in zip(names, configs, run_dirs, continuing):
            if not args.json:
                print(f"{'continuing' if resumes else 'training'} {name} ...", file=sys.stderr)
            results.append(run_contender(name, config, run_dir, train, resume=resumes))
            build_report(results[-1].run_dir)  # each contender's run gets its own report, as every run does
    except (KeyboardInterrupt, Exception) as exc:
        if not stopped_by_ctrl_c(exc):
            raise
        print(
            f"vitlab: interrupted; the same command with --out {out} continues: finished models are kept "
            "and the stopped one resumes from its last finished epoch",
            file=sys.stderr,
        )
        return 130
    paths = write_comparison(results, out, f"{' vs '.join(names)} on {label}{with_recipe(configs[0].recipe)}")
    if args.json:
        _print_json(
            {
                "folder": str(out),
                **{k: str(v) for k, v in paths.items()},
                "results": [
                    {
                        "model": r.name,
                        "test_accuracy": r.test_accuracy,
                        "parameters": r.parameters,
                        "forward_flops": r.forward_flops,
                        "train_images_per_second": r.train_images_per_second,
                        "latency_ms": r.latency_ms,
                        "seconds": r.seconds,
                    }
                    for r in results
                ],
            }
        )
    else:
        print(paths["markdown"].read_text())
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other vitlab error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----- cache -------------------------------------------------------------------------------------
def cmd_cache(args: argparse.Namespace) -> int:
    import datetime

    from vitlab.data.folders import cache_entries, cache_root, clear_cache
    from vitlab.terminal import counted

    place = cache_root() / "folders"
    entries = clear_cache() if args.clear else cache_entries()
    total = sum(entry.bytes for entry in entries)
    if args.json:
        _print_json(
            {
                "cache": str(place),
                "cleared": args.clear,
                "bytes": total,
                "entries": [
                    {
                        "path": str(e.path),
                        "folder": e.folder,
                        "images": e.images,
                        "split": e.split,
                        "shape": e.shape,
                        "bytes": e.bytes,
                        "last_used": datetime.datetime.fromtimestamp(e.last_used).isoformat(timespec="seconds"),
                        "outdated": e.outdated,
                    }
                    for e in entries
                ],
            }
        )
        return 0
    if args.clear:
        print(f"deleted {counted(len(entries), 'decoded image split')} ({byte_size(total)}) from {place}")
        return 0
    print(f"{counted(len(entries), 'decoded image split')} in {place}, {byte_size(total)}")
    for e in entries:
        used = datetime.datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M")
        images = f"{e.images:,} {e.split} images" if e.split else f"{e.images:,} images"
        what = f"{e.folder} ({images}, {e.shape})" if e.folder else "(folder not recorded)"
        print(
            f"  {byte_size(e.bytes):>9}  {what}, last used {used}"
            + ("; outdated: the folder changed" if e.outdated else "")
        )
    if entries:
        print("`vitlab cache --clear` deletes them; a run decodes its folder again when it needs it")
    return 0


def byte_size(count: int) -> str:
    """'512 B', '1.05 kB', '7.5 GB': three significant digits, in powers of 1000 (as disks are sold)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} B"


# ----- parser ------------------------------------------------------------------------------------
def version_line() -> str:
    """'vitlab X.Y.Z (torch A.B.C+BUILD, Python D.E.F)'. torch's own version string names its build (+cpu,
    +cu130), which its package metadata leaves out; importing torch costs a second, here only."""
    import platform

    import torch

    from vitlab import __version__

    return f"vitlab {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


class _VersionAction(argparse.Action):
    """--version: print version_line() and exit; read only when asked (it imports torch, about a second)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the versions and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> NoReturn:
        print(version_line())  # on stdout, as argparse's own version action prints
        parser.exit(0)


def positive_int(text: str) -> int:
    """argparse type for counts and sizes: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


RECIPE_HELP = "a shipped recipe: mnist, fashion-mnist, cifar10, cifar100, folder (default: the data set's own)"


MODEL_HELP = "a run folder (its best checkpoint, else its last) or a .safetensors checkpoint"
MODEL_OR_ONNX_HELP = f"{MODEL_HELP}, or an ONNX file"
IMAGES_HELP = "image files, or folders of them"
DEVICE_HELP = "auto (CUDA when present), cpu or cuda; ONNX runs on the CPU"
JSON_HELP = "print the result as one JSON object on stdout"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from vitlab.config import PRECISION_CHOICES

    parser = _Parser(prog="vitlab", description="Train, evaluate and inspect Vision Transformers.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a model and evaluate it after each epoch")
    finetune = sub.add_parser("finetune", help="start from pretrained weights (vitlab, Hugging Face or timm)")
    finetune.add_argument(
        "source", help="a vitlab run or checkpoint, a Hugging Face ViT folder, or a timm weights file"
    )
    finetune.add_argument("--dataset", required=True, help="data set name or image folder to fine-tune on")
    finetune.add_argument("--img-size", type=positive_int, help="new input size; the position table is resampled")
    finetune.add_argument("--freeze-until", type=int, default=0, help="freeze embeddings and the first N blocks")
    finetune.add_argument("--layer-decay", type=float, default=1.0, help="layer-wise learning-rate decay, e.g. 0.75")
    train.add_argument("--dataset", help="data set name (default: mnist) or an image folder")
    train.add_argument(
        "--model", help="model preset, e.g. mnist-small, cifar-tiny, Ti/16 (see `vitlab info --presets`)"
    )
    train.add_argument("--config", help="YAML file with sections model, data, train")
    train.add_argument("--recipe", help=RECIPE_HELP)
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last epoch")
    for command in (train, finetune):
        length = command.add_mutually_exclusive_group()  # both given, one would be silently ignored
        length.add_argument("--epochs", type=positive_int, help="number of epochs")
        length.add_argument(
            "--time-budget", help="train for this long (e.g. 10m, 90s, 1h30m) with the schedule on time"
        )
        command.add_argument("--out", help="run directory (default: runs/<dataset>-<time>)")
        command.add_argument("--seed", type=int, help="random seed; the same seed repeats the run")
        command.add_argument("--quiet", action="store_true", help="no progress bar")
        command.add_argument("--no-report", action="store_true", help="skip writing report.md at the end")
        command.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
        command.add_argument("--nproc", type=positive_int, default=1, help="train with N processes (torchrun + DDP)")
        command.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=0.002")
        command.set_defaults(handler=cmd_train, resume=None)

    evaluate = sub.add_parser("eval", help="accuracy, loss and per-class accuracy of a checkpoint or ONNX file")
    evaluate.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help=MODEL_OR_ONNX_HELP)
    evaluate.add_argument("--dataset", help="data set (default: the one it was trained on)")
    evaluate.add_argument(
        "--data-dir", help="folder holding the data set's files (default: the one the run trained from, if still there)"
    )
    evaluate.add_argument("--device", default="auto", help=DEVICE_HELP)
    evaluate.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help="fp32, or bf16 autocast (default: as the run scored its epochs; bf16 where the device has it)",
    )
    evaluate.add_argument("--json", action="store_true", help=JSON_HELP)
    evaluate.set_defaults(handler=cmd_eval)

    predict = sub.add_parser("predict", help="classify image files")
    predict.add_argument("checkpoint", metavar="RUN_CHECKPOINT_OR_ONNX", help=MODEL_OR_ONNX_HELP)
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help=IMAGES_HELP)
    predict.add_argument("--top-k", type=positive_int, default=3, help="how many classes to show (default: 3)")
    predict.add_argument(
        "--img-size", type=positive_int, help="run at another input size (a ViT's position table is resampled)"
    )
    predict.add_argument("--invert", action="store_true", help="invert grey levels (dark digit on light paper)")
    predict.add_argument("--device", default="auto", help=DEVICE_HELP)
    predict.add_argument("--json", action="store_true", help=JSON_HELP)
    predict.set_defaults(handler=cmd_predict)

    report = sub.add_parser("report", help="(re)build a run's report.md with figures")
    report.add_argument("run_dir", metavar="RUN", help="a run folder")
    report.add_argument("--json", action="store_true", help=JSON_HELP)
    report.set_defaults(handler=cmd_report)

    attention = sub.add_parser("attention", help="attention maps of images as PNG overlays")
    attention.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help=MODEL_HELP)
    attention.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help=IMAGES_HELP)
    attention.add_argument("--out", default="attention", help="folder for the PNG files (default: ./attention)")
    attention.add_argument("--layer", type=int, default=-1, help="layer whose heads are drawn (default: last)")
    attention.add_argument("--invert", action="store_true", help="invert grey levels (dark digit on light paper)")
    attention.add_argument("--json", action="store_true", help=JSON_HELP)
    attention.set_defaults(handler=cmd_attention)

    compare = sub.add_parser("compare", help="train several models under the same budget and compare them")
    compare.add_argument("--dataset", default="mnist", help="data set name or an image folder (default: mnist)")
    compare.add_argument("--models", required=True, help="comma-separated presets, e.g. mnist-small,resnet-small")
    budget = compare.add_mutually_exclusive_group()
    budget.add_argument("--time-budget", help="per model, e.g. 10m")
    budget.add_argument("--epochs", type=positive_int, help="per model")
    compare.add_argument("--seed", type=int, default=0, help="random seed of every model's run (default: 0)")
    compare.add_argument("--recipe", help=RECIPE_HELP)
    compare.add_argument("--out", help="folder for the runs and the table (default: runs/compare-<dataset>-<time>)")
    compare.add_argument("--quiet", action="store_true", help="no progress bar")
    compare.add_argument("--json", action="store_true", help=JSON_HELP)
    compare.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every model")
    compare.set_defaults(handler=cmd_compare)

    export = sub.add_parser("export", help="export a checkpoint to ONNX (checked with onnxruntime) or TorchScript")
    export.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help=MODEL_HELP)
    export.add_argument(
        "--format",
        choices=("onnx", "torchscript"),
        default="onnx",
        help="onnx (default, checked with onnxruntime) or torchscript",
    )
    export.add_argument(
        "--fixed-batch", type=positive_int, metavar="N", help="an ONNX graph for batches of exactly N (default: any)"
    )
    # Old scripts pass --dynamic-batch; any batch is the default now.
    export.add_argument("--dynamic-batch", action="store_true", help=argparse.SUPPRESS)
    export.add_argument("--out", help="output file (default: beside the checkpoint)")
    export.add_argument("--json", action="store_true", help=JSON_HELP)
    export.set_defaults(handler=cmd_export)

    info = sub.add_parser("info", help="parameters and FLOPs of a preset or checkpoint")
    info.add_argument(
        "items",
        nargs="*",
        metavar="RUN_OR_CHECKPOINT | key=value",
        help="a run or checkpoint, or model settings that change the preset, e.g. img_size=32 patch_size=4",
    )
    info.add_argument("--model", help="preset name (default: the default preset)")
    info.add_argument("--presets", action="store_true", help="list every preset with its size and FLOPs")
    info.add_argument("--json", action="store_true", help=JSON_HELP)
    info.set_defaults(handler=cmd_info)

    cache = sub.add_parser("cache", help="list, or clear, the decoded image folders kept on disk")
    cache.add_argument("--clear", action="store_true", help="delete them (a run decodes its folder again)")
    cache.add_argument("--json", action="store_true", help=JSON_HELP)
    cache.set_defaults(handler=cmd_cache)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors print one line and exit 2, an interrupted one 130."""
    status = _run_command(argv)
    if status == 130:
        # CPython ends the process by SIGINT at exit, whatever status it was given, once a
        # KeyboardInterrupt has left an exec() of source text (as when Ctrl-C lands while an import
        # defines a dataclass), even one caught since; an exec() that succeeds clears that.
        exec("")
    return status


def attach_negative_values(argv: list[str]) -> list[str]:
    """`--opt -5m` written as `--opt=-5m`: argparse reads a word such as -5m as an unknown option and
    answers "expected one argument", where the value itself is what is wrong (a negative duration)."""
    attached: list[str] = []
    for token in argv:
        previous = attached[-1] if attached else ""
        if re.match(r"-\.?\d", token) and previous.startswith("--") and previous != "--" and "=" not in previous:
            attached[-1] = f"{previous}={token}"
        else:
            attached.append(token)
    return attached


def parse_command_line(argv: list[str] | None) -> argparse.Namespace:
    """The subcommand and its arguments; a usage error exits as argparse's do."""
    parser = build_parser()
    args, extra = parser.parse_known_args(attach_negative_values(sys.argv[1:] if argv is None else argv))
    # key=value overrides may follow options (argparse stops filling a positional list at the first option).
    if extra and hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _run_command(argv: list[str] | None) -> int:
    from vitlab.interrupts import interrupts_deferred, stopped_by_ctrl_c, take_interrupts
    from vitlab.launch import follow_launcher, launched_worker

    take_interrupts()
    try:
        follow_launcher()
        args = parse_command_line(argv)
        # A Ctrl-C inside torch's import can abort the process from native code: take it once torch is in.
        with interrupts_deferred():
            import torch  # noqa: F401
        from vitlab.engine.runtime import reuse_freed_memory

        # Every command that computes reallocates the same tensor sizes over and over, in a process of its own.
        reuse_freed_memory(every_size=True)
        return args.handler(args)
    except VitlabError as exc:
        _report_error(str(exc))
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except OSError as exc:  # the file system refused: a path that is a file, no permission, a full disk...
        _report_error(f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc))
        return 2
    except (KeyboardInterrupt, Exception) as exc:
        if not stopped_by_ctrl_c(exc):
            raise
        if not launched_worker():
            print("vitlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
