"""One line per sweep run under /tmp/runs: epochs done, final and EMA test accuracy, the curve."""

import json
import pathlib

for run in sorted(pathlib.Path("/tmp/runs").iterdir()):
    if not run.is_dir() or run.name == "warm":
        continue
    metrics = run / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    if not rows:
        print(run.name, "no epochs:", pathlib.Path(f"{run}.log").read_text()[-500:])
        continue
    last = rows[-1]
    curve = " ".join(f"{100 * r['test_accuracy']:.1f}" for r in rows[:: max(1, len(rows) // 8)])
    ema = 100 * (last.get("ema_test_accuracy") or 0)
    print(
        f"{run.name}: epochs {last['epoch']} final {100 * last['test_accuracy']:.2f} ema {ema:.2f} "
        f"| {curve} | {last['seconds']:.1f}s/ep"
    )
