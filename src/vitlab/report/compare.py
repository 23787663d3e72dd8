"""The comparison's outputs: a markdown table, the same as CSV, and accuracy against wall-clock time."""

from __future__ import annotations

import csv
from pathlib import Path

from vitlab.engine.compare import ContenderResult
from vitlab.report.plots import plt, save_figure

COLUMNS = (
    "model",
    "test accuracy",
    "parameters",
    "forward MFLOPs/image",
    "train images/s",
    "latency b=1 (ms)",
    "seconds",
)


def _row(result: ContenderResult) -> list[str]:
    return [
        result.name,
        f"{result.test_accuracy:.2%}",
        f"{result.parameters:,}",
        f"{result.forward_flops / 1e6:.1f}",
        f"{result.train_images_per_second:,.0f}",
        f"{result.latency_ms:.2f}",
        f"{result.seconds:.{1 if result.seconds < 100 else 0}f}",  # a short run still shows a time
    ]


def write_comparison(results: list[ContenderResult], folder: Path, title: str) -> dict[str, Path]:
    """Write compare.md, compare.csv and compare.png into folder; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "compare.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "model",
                "test_accuracy",
                "parameters",
                "forward_flops",
                "train_images_per_second",
                "latency_ms",
                "seconds",
            ]
        )
        for r in results:
            writer.writerow(
                [
                    r.name,
                    r.test_accuracy,
                    r.parameters,
                    r.forward_flops,
                    r.train_images_per_second,
                    r.latency_ms,
                    r.seconds,
                ]
            )

    fig, (full, zoom) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for r in results:
        if r.curve:
            for ax in (full, zoom):
                ax.plot([t / 60 for t, _ in r.curve], [100 * a for _, a in r.curve], "o-", label=r.name, markersize=3)
    finals = [100 * r.test_accuracy for r in results]
    fig.suptitle(title)  # across both panels: it names the models, the data set and the recipe
    full.set(xlabel="wall-clock minutes (training + evaluation)", ylabel="test accuracy (%)", title="every point")
    zoom.set(xlabel="wall-clock minutes (training + evaluation)", ylabel="test accuracy (%)", title="the last points")
    if finals:
        zoom.set_ylim(max(min(finals) - 2, 0), min(max(finals) + 0.5, 100))
    for ax in (full, zoom):
        ax.grid(alpha=0.3)
    if any(r.curve for r in results):
        # One legend below both panels: inside the zoomed one it covered the lower model's last points.
        fig.legend(*full.get_legend_handles_labels(), loc="outside lower center", ncols=len(results))
    save_figure(fig, folder / "compare.png")

    lines = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in results]
    lines += ["", "![accuracy against wall-clock time](compare.png)", ""]
    (folder / "compare.md").write_text("\n".join(lines))
    return {"markdown": folder / "compare.md", "csv": folder / "compare.csv", "plot": folder / "compare.png"}
