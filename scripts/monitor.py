"""Monitor a live model: captured traffic of a time window against the version's baseline
(SageMaker Processing contract; no AWS calls).

Inputs:  --capture-dir   data-capture JSON lines, any layout below it (SageMaker's is
                         <endpoint>/<variant>/yyyy/mm/dd/hh/*.jsonl)
                         (default /opt/ml/processing/input/capture)
         --baseline      the version's baseline.json (evaluate.py writes it), or a folder holding
                         it (default /opt/ml/processing/input/baseline)
         --since/--until the window: ISO 8601 times, or --since as a duration before --until
                         (30m, 1h, 2d); --until defaults to now; --lag moves the window that
                         much earlier (SageMaker writes capture files minutes after the
                         requests: the scheduled job judges the hour that ended --lag ago)
Outputs: --output-dir (default /opt/ml/processing/output)
         monitor.json    requests, error rate, low-confidence share, the class distribution's
                         drift (PSI, chi-square p), the confidence's and the input statistics'
                         drift (Kolmogorov-Smirnov), verdicts and their thresholds; the capture
                         lines that were skipped and why
         monitor.html    the same with plots, one self-contained page

It prints one JSON line of metrics beginning {"dogbreed_monitor": 1, ...}: in SageMaker, CloudWatch
Logs metric filters on the processing jobs' log group turn it into CloudWatch metrics (namespace
DogBreed/Monitor, dimensions EndpointName and ModelVersion) that the drift alarm watches. Drift is
a finding, not a failure: the job exits 0 whatever the verdicts.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import os
import re
import sys
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from breedkit.contract import UserError, parse_args, run_main, setup_logging  # noqa: E402

log = logging.getLogger("monitor")
MAX_SKIPPED_LISTED = 50
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def build_parser() -> argparse.ArgumentParser:
    from breedkit.drift import Thresholds

    t = Thresholds()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--capture-dir", default="/opt/ml/processing/input/capture")
    p.add_argument("--baseline", default="/opt/ml/processing/input/baseline")
    p.add_argument("--output-dir", default="/opt/ml/processing/output")
    p.add_argument("--since", default="1h", help="an ISO time or a duration before --until")
    p.add_argument("--until", default="", help="an ISO time (default: now)")
    p.add_argument("--lag", default="0m", help="a duration the window is moved earlier by")
    p.add_argument("--not-before", default="",
                   help="an ISO time the window never starts before: when the version was "
                        "deployed (traffic of the version before it is not judged against "
                        "this one's baseline)")
    p.add_argument("--endpoint", default="", help="named in the report and the metrics")
    p.add_argument("--model-version", default="", help="named in the report and the metrics")
    p.add_argument("--alpha", type=float, default=t.alpha,
                   help="false-drift rate of a run: each of the 8 tests runs at alpha / 8")
    p.add_argument("--psi-threshold", type=float, default=t.psi)
    p.add_argument("--ks-threshold", type=float, default=t.ks)
    p.add_argument("--low-confidence", type=float, default=t.low_confidence,
                   help="a top-1 probability below this is a low-confidence prediction")
    p.add_argument("--low-confidence-margin", type=float, default=t.low_confidence_margin)
    p.add_argument("--max-error-rate", type=float, default=t.max_error_rate)
    p.add_argument("--min-images", type=int, default=t.min_images,
                   help="fewer images in the window: measures without verdicts")
    return p


def duration(text: str) -> timedelta | None:
    """30m, 1h, 2d, ... as a timedelta; None when ``text`` is not a duration."""
    found = _DURATION.match(text.strip().lower())
    return timedelta(**{_UNITS[found[2]]: float(found[1])}) if found else None


def window(since: str, until: str, now: datetime | None = None,
           lag: str = "0m") -> tuple[datetime, datetime]:
    from breedkit.capture import parse_time

    def when(text: str, name: str) -> datetime:
        try:
            return parse_time(text)
        except ValueError:
            raise UserError(f"--{name} {text!r} is neither an ISO 8601 time "
                            f"(2026-12-06T15:00:00Z) nor, for --since, a duration (30m, 1h, 2d)"
                            ) from None

    delay = duration(lag)
    if delay is None:
        raise UserError(f"--lag {lag!r} is not a duration (0m, 15m, 1h)")
    end = (when(until, "until") if until.strip() else (now or datetime.now(timezone.utc))) \
        - delay
    length = duration(since)
    start = end - length if length is not None else when(since, "since") - delay
    if start >= end:
        raise UserError(f"the window is empty: --since {since} is not before --until "
                        f"{end.isoformat()}")
    return start, end


def clip(start: datetime, end: datetime, not_before: str) -> datetime:
    """The window's start, moved to ``not_before`` when that is later (up to the end: an empty
    window, which the report says)."""
    from breedkit.capture import parse_time

    try:
        floor = parse_time(not_before)
    except ValueError:
        raise UserError(f"--not-before {not_before!r} is not an ISO 8601 time") from None
    if floor > start:
        log.info("the window starts at %s, when this version was deployed", floor.isoformat())
    return min(max(start, floor), end)


def load_baseline(path: str) -> dict:
    from breedkit.drift import baseline_problem
    from breedkit.monitorspec import BASELINE_FILE

    if os.path.isdir(path):
        path = os.path.join(path, BASELINE_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise UserError(f"no baseline at {path}: pass --baseline with the version's "
                        f"baseline.json (Evaluate writes it beside evaluation.json)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"the baseline {path} cannot be read: {exc}") from None
    problem = baseline_problem(doc)
    if problem:
        raise UserError(f"the baseline {path} is unusable: {problem}")
    return doc


def measure(args, baseline: dict, start: datetime, end: datetime):
    """The report of the window, and the window itself (its samples are what the plots
    show)."""
    from breedkit.capture import capture_files, iso, read_events
    from breedkit.drift import Thresholds, Window, compare

    thresholds = Thresholds(args.alpha, args.psi_threshold, args.ks_threshold,
                            args.low_confidence, args.low_confidence_margin,
                            args.max_error_rate, args.min_images)
    problem = thresholds.check()
    if problem:
        raise UserError(f"bad threshold: {problem}")
    if not os.path.isdir(args.capture_dir):
        raise UserError(f"--capture-dir {args.capture_dir} is not a folder: pass the endpoint's "
                        f"data-capture folder")
    files = capture_files(args.capture_dir, start, end)
    skipped = []
    traffic = Window(len(baseline["class_names"]), baseline.get("model_input_size", 0))
    for event in read_events(files, skipped):
        if start <= event.when < end:
            traffic.add(event)
    report = {"endpoint": args.endpoint or None, "model_version": args.model_version or None,
              "window": {"since": iso(start), "until": iso(end)},
              "baseline": {"split": baseline.get("split"), "images": baseline.get("images")},
              "capture_files": len(files), **compare(baseline, traffic, thresholds),
              "skipped_lines": len(skipped),
              "skipped": [vars(s) for s in skipped[:MAX_SKIPPED_LISTED]]}
    return report, traffic


def metrics_line(report: dict) -> str:
    """One JSON log line that CloudWatch Logs metric filters turn into metrics."""
    drifting_inputs = sum(bool(v["drift"]) for v in report["inputs"].values())
    values = {"Requests": report["requests"], "Images": report["images"],
              "ErrorRate": report["error_rate"],
              "LowConfidenceShare": report["low_confidence"]["share"],
              "ClassPSI": report["class_distribution"]["psi_excess"],
              "ConfidenceKS": report["confidence"]["ks"],
              "DriftingInputStatistics": drifting_inputs, "Drift": int(report["drift"])}
    from breedkit import monitorspec

    assert tuple(values) == monitorspec.METRICS  # what the deploy's metric filters read
    return json.dumps({monitorspec.MARKER: 1, "EndpointName": report["endpoint"] or "unknown",
                       "ModelVersion": report["model_version"] or "unknown",
                       **{k: v for k, v in values.items() if v is not None}})


def summary(report: dict) -> list[str]:
    w = report["window"]
    lines = [f"{report['requests']} requests ({report['images']} images) between {w['since']} "
             f"and {w['until']} in {report['capture_files']} capture files"]
    if report["skipped_lines"]:
        first = report["skipped"][0]
        lines.append(f"skipped {report['skipped_lines']} capture lines that are not records "
                     f"(first: {first['file']} line {first['line']}: {first['reason']})")
    if report["requests"] == 0:
        lines.append("no captured requests in this window: nothing to judge")
        return lines
    if not report["enough_traffic"]:
        lines.append(f"fewer than {report['thresholds']['min_images']} images: measures "
                     f"without verdicts")
    c, k = report["class_distribution"], report["confidence"]
    low = report["low_confidence"]
    lines.append(f"error rate {report['error_rate']}; low-confidence share {low['share']} "
                 f"(baseline {low['baseline_share']})")
    lines.append(f"class distribution: PSI {c['psi']} ({c['psi_excess']} above what chance "
                 f"gives), chi-square p {c['p']}{_flag(c['drift'])}")
    lines.append(f"top-1 confidence: KS {k['ks']}, p {k['p']}, mean {k['mean']} "
                 f"(baseline {k['baseline_mean']}){_flag(k['drift'])}")
    for name, s in report["inputs"].items():
        lines.append(f"input {name}: KS {s['ks']}, p {s['p']}, mean {s['mean']} "
                     f"(baseline {s['baseline_mean']}){_flag(s['drift'])}")
    fired = [name for name, verdict in report["verdicts"].items() if verdict]
    lines.append(f"verdict: {'DRIFT' if report['drift'] else 'no drift'}"
                 f"{' (' + ', '.join(fired) + ')' if fired else ''}")
    return lines


def _flag(drift) -> str:
    return {True: "  <- drift", False: "", None: ""}[drift]


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plots(report: dict, baseline: dict, traffic) -> list[tuple[str, str]]:
    """(title, base64 PNG) of the class shares, the confidences and the input statistics;
    none where matplotlib is not installed (the SageMaker inference images the scheduled job
    runs in may lack it): the page then has the tables alone."""
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed: monitor.html has no plots")
        return []

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from breedkit.capture import STATS

    figures = []
    classes = report["class_distribution"]["most_changed"]
    if classes:
        fig, ax = plt.subplots(figsize=(8, 3))
        x = np.arange(len(classes))
        ax.bar(x - 0.2, [c["baseline_share"] for c in classes], 0.4, label="baseline")
        ax.bar(x + 0.2, [c["share"] for c in classes], 0.4, label="window")
        ax.set_xticks(x, [c["class"][:24] for c in classes], rotation=20, fontsize=8)
        ax.set_ylabel("share of predictions")
        ax.legend()
        figures.append(("The classes whose share moved most", _png(fig)))
    names = ["top1_confidence", *STATS]
    rows = -(-len(names) // 4)  # four panels a row
    fig, axes = plt.subplots(rows, 4, figsize=(12, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        ref = baseline["top1_confidence"] if name == "top1_confidence" \
            else baseline["inputs"].get(name, [])
        now = traffic.confidences.items if name == "top1_confidence" \
            else [row[name] for row in traffic.stats.items]
        bins = np.linspace(0, 1, 21)
        ax.hist(ref, bins=bins, density=True, alpha=0.5, label="baseline")
        if len(now):
            ax.hist(now, bins=bins, density=True, alpha=0.5, label="window")
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    figures.append(("Top-1 confidence and input statistics (density)", _png(fig)))
    return figures


def write_html(path: str, report: dict, figures: list[tuple[str, str]]) -> None:
    def cell(value) -> str:
        return html.escape("" if value is None else str(value))

    rows = [("class distribution", report["class_distribution"]["psi_excess"],
             f"PSI above chance; chi-square p {report['class_distribution']['p']}",
             report["class_distribution"]["drift"]),
            ("top-1 confidence", report["confidence"]["ks"],
             f"KS; p {report['confidence']['p']}", report["confidence"]["drift"])]
    rows += [(f"input {name}", s["ks"], f"KS; p {s['p']}; mean {s['mean']} (baseline "
              f"{s['baseline_mean']})", s["drift"]) for name, s in report["inputs"].items()]
    table = "".join(f"<tr><td>{cell(a)}</td><td>{cell(b)}</td><td>{cell(c)}</td>"
                    f"<td class='{'bad' if d else ''}'>{cell({True: 'drift', False: 'ok'}.get(d, 'n/a'))}"
                    f"</td></tr>" for a, b, c, d in rows)
    images = "".join(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
                     f"src='data:image/png;base64,{png}'>" for title, png in figures)
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in summary(report))
    verdict = "DRIFT" if report["drift"] else "no drift"
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>Monitor {cell(report['endpoint'])}</title><style>
body{{font-family:sans-serif;margin:2em;max-width:72em}} td,th{{padding:.2em .8em;text-align:left}}
.bad{{color:#b00;font-weight:bold}} h1 span{{color:{'#b00' if report['drift'] else '#080'}}}
</style></head><body>
<h1>{cell(report['endpoint'] or 'endpoint')} version {cell(report['model_version'])}: <span>{verdict}</span></h1>
<ul>{lines}</ul>
<table><tr><th>measure</th><th>value</th><th></th><th>verdict</th></tr>{table}</table>
{images}
<h2>Report</h2><pre>{html.escape(json.dumps(report, indent=1))}</pre>
</body></html>"""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)


def main(argv=None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logging()
    start, end = window(args.since, args.until, lag=args.lag)
    if args.not_before.strip():
        start = clip(start, end, args.not_before)
    baseline = load_baseline(args.baseline)
    report, traffic = measure(args, baseline, start, end)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "monitor.json"), "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    write_html(os.path.join(args.output_dir, "monitor.html"), report,
               plots(report, baseline, traffic))
    for line in summary(report):
        log.info("%s", line)
    print(metrics_line(report), flush=True)
    log.info("monitor.json and monitor.html written to %s", args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
