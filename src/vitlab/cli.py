"""The `vitlab` command: parses arguments, calls the layers below, prints results. No logic of its own."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from vitlab.errors import VitlabError


def _print_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")


# ----- train -------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from vitlab.engine.train import Trainer, prepare_run_dir, trainer_for_resume
    from vitlab.recipes import resolve_run_config
    from vitlab.report.progress import TrainingProgress

    if args.resume:
        run_dir = Path(args.resume)
        trainer = trainer_for_resume(run_dir, epochs=args.epochs)
    else:
        config = resolve_run_config(
            preset=args.model,
            config_file=args.config,
            dataset=args.dataset,
            epochs=args.epochs,
            seed=args.seed,
            overrides=args.overrides,
        )
        run_dir = Path(args.out) if args.out else Path("runs") / time.strftime(f"{config.data.dataset}-%Y%m%d-%H%M%S")
        prepare_run_dir(config, run_dir)
        trainer = Trainer(config, run_dir)
    cfg = trainer.config
    if not args.json:
        print(
            f"training {cfg.preset or 'custom'} ViT on {cfg.data.dataset} "
            f"({len(trainer.train_set)} train / {len(trainer.test_set)} test images) for {cfg.train.epochs} epochs; "
            f"device {trainer.device}, {'bf16' if trainer.dtype else 'fp32'}, {trainer.threads} threads; run dir {run_dir}",
            file=sys.stderr,
        )
    with TrainingProgress(
        cfg.train.epochs, trainer.steps_per_epoch, trainer.start_epoch, enabled=not args.quiet
    ) as bar:
        result = trainer.run(on_progress=bar.on_step, on_epoch=bar.on_epoch)
    summary = {
        "run_dir": str(run_dir),
        "epochs": cfg.train.epochs,
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
    return 0


# ----- eval --------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from vitlab.data.sources import dataset_info, load_split
    from vitlab.engine.checkpoint import load_checkpoint
    from vitlab.engine.evaluate import evaluate
    from vitlab.engine.runtime import autocast_dtype, configure_threads, resolve_device
    from vitlab.errors import ConfigError

    model, metadata = load_checkpoint(args.checkpoint)
    name = args.dataset or metadata.get("dataset", "mnist")
    info = dataset_info(name)
    if len(info.class_names) != model.config.num_classes:
        raise ConfigError(f"the model has {model.config.num_classes} classes but {name} has {len(info.class_names)}")
    split = load_split(name, "test", args.data_dir or "")
    configure_threads()
    device = resolve_device(args.device)
    model.to(device).set_attention_kernel(device.type)
    scores = evaluate(
        model,
        split.images,
        split.labels,
        mean=metadata["mean"],
        std=metadata["std"],
        device=device,
        dtype=autocast_dtype("auto", device),
    )
    payload = {"checkpoint": str(args.checkpoint), "dataset": name, **scores.to_dict(info.class_names)}
    if args.json:
        _print_json(payload)
        return 0
    print(
        f"{name} test: accuracy {scores.accuracy:.2%}  top-5 {scores.top5_accuracy:.2%}  loss {scores.loss:.4f}  ({scores.num_examples} images)"
    )
    for class_name, accuracy in payload["per_class_accuracy"].items():
        print(f"  {class_name:>12}  {accuracy:.2%}")
    return 0


# ----- predict -----------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from vitlab.data.images import load_image
    from vitlab.engine.checkpoint import load_checkpoint
    from vitlab.engine.evaluate import predict_logits

    model, metadata = load_checkpoint(args.checkpoint)
    config = model.config
    batch = torch.stack([load_image(path, config.in_channels, config.img_size) for path in args.images])
    if args.invert:
        batch = 255 - batch
    probabilities = predict_logits(model, batch, mean=metadata["mean"], std=metadata["std"]).softmax(dim=1)
    names = metadata.get("class_names") or [str(i) for i in range(config.num_classes)]
    k = max(1, min(args.top_k, config.num_classes))
    results = []
    for path, probs in zip(args.images, probabilities):
        top = probs.topk(k)
        results.append(
            {
                "image": str(path),
                "top_k": [
                    {"class": names[i], "index": int(i), "probability": float(p)}
                    for p, i in zip(top.values, top.indices)
                ],
            }
        )
    if args.json:
        _print_json({"checkpoint": str(args.checkpoint), "predictions": results})
        return 0
    for item in results:
        ranked = ", ".join(f"{entry['class']} {entry['probability']:.1%}" for entry in item["top_k"])
        print(f"{item['image']}: {ranked}")
    return 0


# ----- info --------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from vitlab.models.flops import forward_flops, training_flops
    from vitlab.models.registry import DEFAULT_PRESET, model_config
    from vitlab.models.vit import ViT

    if args.checkpoint:
        from vitlab.engine.checkpoint import load_checkpoint

        model, metadata = load_checkpoint(args.checkpoint)
        source = str(args.checkpoint)
    else:
        config = model_config(args.model or DEFAULT_PRESET)
        config.validate()
        model, metadata, source = ViT(config), {}, f"preset {args.model or DEFAULT_PRESET}"
    config = model.config
    payload = {
        "source": source,
        "parameters": sum(p.numel() for p in model.parameters()),
        "forward_flops_per_image": forward_flops(config),
        "training_flops_per_image": training_flops(config),
        "tokens": config.num_patches + (1 if config.pool == "cls" else 0),
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
    print(f"  forward FLOPs     {payload['forward_flops_per_image'] / 1e6:,.2f} M per image")
    print(f"  training FLOPs    {payload['training_flops_per_image'] / 1e6:,.2f} M per image (3x forward)")
    print(
        f"  tokens            {payload['tokens']} ({config.grid_size}x{config.grid_size} patches of {config.patch_size}px)"
    )
    print(
        f"  architecture      width {config.embed_dim}, depth {config.depth}, heads {config.num_heads}, "
        f"MLP {config.mlp_dim}, posenc {config.posenc}, pool {config.pool}, head {config.head}"
    )
    print(f"  input             {config.in_channels}x{config.img_size}x{config.img_size}, {config.num_classes} classes")
    for key in ("dataset", "epoch", "metrics"):
        if key in payload:
            print(f"  {key:<17} {payload[key]}")
    return 0


# ----- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="vitlab", description="Train, evaluate and inspect Vision Transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a ViT and evaluate it after each epoch")
    train.add_argument("--dataset", help="data set name (default: mnist)")
    train.add_argument("--model", help="model preset, e.g. mnist-small, cifar-tiny, Ti/16 (see `vitlab info`)")
    train.add_argument("--epochs", type=int, help="number of epochs")
    train.add_argument("--out", help="run directory (default: runs/<dataset>-<time>)")
    train.add_argument("--seed", type=int, help="random seed; the same seed repeats the run")
    train.add_argument("--config", help="YAML file with sections model, data, train")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last epoch")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=0.002")
    train.set_defaults(handler=cmd_train)

    evaluate = sub.add_parser("eval", help="accuracy, loss and per-class accuracy of a checkpoint")
    evaluate.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    evaluate.add_argument("--dataset", help="data set (default: the one it was trained on)")
    evaluate.add_argument("--data-dir", help="folder holding the data set's files")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(handler=cmd_eval)

    predict = sub.add_parser("predict", help="classify image files")
    predict.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--invert", action="store_true", help="invert grey levels (dark digit on light paper)")
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(handler=cmd_predict)

    info = sub.add_parser("info", help="parameters and FLOPs of a preset or checkpoint")
    info.add_argument("checkpoint", nargs="?", metavar="RUN_OR_CHECKPOINT")
    info.add_argument("--model", help="preset name (default: the default preset)")
    info.add_argument("--json", action="store_true")
    info.set_defaults(handler=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except VitlabError as exc:
        print(f"vitlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        run_hint = f"; continue with: vitlab train --resume {args.out}" if getattr(args, "out", None) else ""
        print(f"vitlab: interrupted{run_hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
