"""The profiler report: an HTML page from train.py's ``--profile-out`` files (TrainingRules).

Plots CPU, memory (and GPU) use over time and the time of each training step split into data
loading, forward/backward and optimizer, with a summary table and plain-language findings.
Images are embedded, so the page is one file.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def summarize(steps: list[dict]) -> dict:
    phases = ("data_s", "forward_backward_s", "optimizer_s")
    totals = {p: sum(s[p] for s in steps) for p in phases}
    total = sum(totals.values()) or 1e-9
    images = sum(s["images"] for s in steps)
    return {"steps": len(steps), "images": images,
            "images_per_second": images / total,
            "mean_ms": {p: 1000 * totals[p] / max(1, len(steps)) for p in phases},
            "share": {p: totals[p] / total for p in phases}}


def findings(summary: dict, system: list[dict]) -> list[str]:
    notes = []
    if summary["steps"] and summary["share"]["data_s"] > 0.2:
        notes.append(f"Data loading takes {summary['share']['data_s']:.0%} of each step: raise "
                     f"--workers, or preprocess to a smaller --image-size.")
    if summary["steps"] and summary["share"]["optimizer_s"] > 0.2:
        notes.append(f"The optimizer step takes {summary['share']['optimizer_s']:.0%} of each "
                     f"step: try a larger --batch-size.")
    gpu = [r["gpu_percent"] for r in system if "gpu_percent" in r]
    if gpu and sum(gpu) / len(gpu) < 50:
        notes.append(f"GPU utilization averages {sum(gpu) / len(gpu):.0f}%: the GPU waits; "
                     f"raise --batch-size or --workers.")
    memory = [r["memory_percent"] for r in system]
    if memory and max(memory) > 90:
        notes.append(f"System memory peaked at {max(memory):.0f}%: lower --batch-size or "
                     f"--workers.")
    return notes or ["No bottleneck stands out."]


def build_report(profile_dir: str | Path, out_html: str | Path,
                 title: str = "Training profile") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profile_dir, out_html = Path(profile_dir), Path(out_html)
    steps = _read(profile_dir / "steps.jsonl")
    system = _read(profile_dir / "system.jsonl")
    summary = summarize(steps)
    images = []
    if system:
        t = [r["t"] for r in system]
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
        ax1.plot(t, [r["cpu_percent"] for r in system], label="system CPU %")
        ax1.plot(t, [r["process_cpu_percent"] for r in system], label="training process CPU %")
        if any("gpu_percent" in r for r in system):
            ax1.plot(t, [r.get("gpu_percent", 0) for r in system], label="GPU %")
        ax1.set_ylabel("utilization %")
        ax1.legend(loc="upper right", fontsize=8)
        ax2.plot(t, [r["process_rss_mb"] for r in system], label="process memory (MB)")
        if any("gpu_memory_mb" in r for r in system):
            ax2.plot(t, [r.get("gpu_memory_mb", 0) for r in system], label="GPU memory (MB)")
        ax2.set_ylabel("MB")
        ax2.set_xlabel("seconds since training started")
        ax2.legend(loc="upper right", fontsize=8)
        images.append(("System use over time", _png(fig)))
    if steps:
        fig, ax = plt.subplots(figsize=(9, 3.5))
        x = list(range(len(steps)))
        bottom = [0.0] * len(steps)
        for key, label in (("data_s", "data loading"), ("forward_backward_s",
                                                         "forward + backward"),
                           ("optimizer_s", "optimizer")):
            values = [1000 * s[key] for s in steps]
            ax.bar(x, values, bottom=bottom, width=1.0, label=label)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_xlabel("training step")
        ax.set_ylabel("ms")
        ax.legend(fontsize=8)
        images.append(("Time per training step", _png(fig)))
    rows = "".join(
        f"<tr><td>{label}</td><td>{summary['mean_ms'][key]:.1f} ms</td>"
        f"<td>{summary['share'][key]:.0%}</td></tr>"
        for key, label in (("data_s", "data loading"), ("forward_backward_s",
                                                       "forward + backward"),
                           ("optimizer_s", "optimizer"))) if steps else ""
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>{summary['steps']} training steps, {summary['images']} images, "
            f"{summary['images_per_second']:.1f} images/s in the timed phases.</p>",
            "<table border=1 cellpadding=4><tr><th>phase</th><th>mean per step</th>"
            f"<th>share</th></tr>{rows}</table>",
            "<h2>Findings</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>"
                                               for n in findings(summary, system)) + "</ul>"]
    for heading, data in images:
        body.append(f"<h2>{heading}</h2><img alt='{heading}' src='data:image/png;base64,{data}'>")
    out_html.write_text("<!doctype html><html><head><meta charset='utf-8'><title>"
                        f"{html.escape(title)}</title></head><body>{''.join(body)}</body></html>\n")
    return out_html
