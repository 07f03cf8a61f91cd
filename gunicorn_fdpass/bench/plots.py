"""PNG plots of a report, drawn with matplotlib when it is installed (the ``plots`` extra).

- ``comparison.png``: one small bar chart per table row, one bar per worker class, each
  labelled with its ratio against the baseline;
- ``hol_latency.png``: the fast requests' latency percentiles in the head-of-line scenario;
- ``fairness.png``: each worker's share of the requests in the fairness scenario;
- ``balance.png``: each worker's share of the CPU time in the balance scenario's median draw.

With several rounds (``--repeat``), the last two show, for each worker class, its median round
(by fast p99, by Jain's index).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: What a share plot shows of one result: the amount per worker, and its Jain's index.
Share = tuple[dict[str, Any] | None, float | None]


def write_plots(doc: dict[str, Any], directory: Path) -> list[Path] | None:
    """Draw the plots of ``doc`` into ``directory``; None if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    labels = [w["label"] for w in doc["workers"]]
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = directory / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    rows = [t for t in doc["table"] if any(v is not None for v in t["values"].values())]
    if rows:
        cols = min(3, len(rows))
        nrows = math.ceil(len(rows) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for n, row in enumerate(rows):
            ax = axes[n // cols][n % cols]
            values = [row["values"].get(label) or 0.0 for label in labels]
            bars = ax.bar(range(len(labels)), values,
                          color=[colors[i % len(colors)] for i in range(len(labels))])
            failures = row.get("failures") or {}
            skipped = row.get("skipped") or {}
            for bar, label in zip(bars, labels, strict=True):
                r = row["ratios"].get(label)
                text = "FAILED" if label in failures else skipped.get(
                    label, "-" if r is None else f"{r:.2f}x")
                ax.annotate(text,
                            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=8)
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, fontsize=8)
            unit = f" ({row['unit']})" if row["unit"] else ""
            ax.set_title(f"{row['scenario']}: {row['metric']}{unit}\n{row['better']} is better",
                         fontsize=9)
            ax.margins(y=0.15)
        for n in range(len(rows), nrows * cols):
            axes[n // cols][n % cols].set_visible(False)
        fig.suptitle(f"{doc['app']}, {doc['settings']['workers']} workers, "
                     f"{doc['machine']['cpus']} CPUs (indicative; labels: ratio against "
                     f"{doc['baseline']})", fontsize=10)
        save(fig, "comparison.png")

    hol = _median_rounds(doc, "hol", lambda m: (m.get("latency_ms") or {}).get("p99"))
    if hol:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for r in hol:
            samples = sorted(r["metrics"].get("fast_latencies_ms") or [])
            if not samples:
                continue
            pcts = [100.0 * (n + 1) / len(samples) for n in range(len(samples))]
            ax.plot(pcts, samples, label=r["worker"])
        ax.set_xlabel("percentile of fast requests")
        ax.set_ylabel("latency from intended send time (ms)")
        ax.set_yscale("log")
        ax.set_title("head-of-line: fast requests among slow ones" + _rounds_note(doc))
        ax.legend()
        save(fig, "hol_latency.png")

    shares: tuple[tuple[str, str, Callable[[dict[str, Any]], Share], str, str], ...] = (
        ("fairness", "jain", lambda m: (m.get("per_worker"), m.get("jain")),
         "share of requests per worker (%)", "fairness: one block per worker process"),
        # balance: all draws' requests would hide which worker was busy in each; the median
        # draw's CPU time shows it.
        ("balance", "jain_cpu", _median_draw_cpu, "share of worker CPU time (%)",
         "balance: one block per worker process, median draw"),
    )
    for scenario, jain_key, pick, ylabel, title in shares:
        picked = _median_rounds(doc, scenario, functools.partial(_number, key=jain_key))
        if not picked:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        names = []
        for n, r in enumerate(picked):
            per_worker, jain = pick(r["metrics"])
            counts = list((per_worker or {}).values())
            total = sum(counts) or 1
            bottom = 0.0
            for count in counts:
                share = 100.0 * count / total
                ax.bar(n, share, bottom=bottom, edgecolor="white")
                bottom += share
            names.append(f"{r['worker']}\nJain {jain or 0:.3f}")
        ax.set_xticks(range(len(picked)))
        ax.set_xticklabels(names)
        ax.set_ylabel(ylabel)
        ax.set_title(title + _rounds_note(doc))
        save(fig, f"{scenario}.png")
    return written


def _number(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


def _median_draw_cpu(metrics: dict[str, Any]) -> Share:
    """balance: the per-worker CPU ticks and Jain's index of the draw with the median index."""
    draws = [d for d in metrics.get("draws") or [] if d.get("jain_cpu") is not None]
    if not draws:
        return None, None
    draws.sort(key=lambda d: d["jain_cpu"])
    middle = draws[(len(draws) - 1) // 2]
    return middle["per_worker_cpu_ticks"], middle["jain_cpu"]


def _median_rounds(doc: dict[str, Any], scenario: str,
                   key: Callable[[dict[str, Any]], float | None]) -> list[dict[str, Any]]:
    """The results of ``scenario`` that completed: per worker class, the round in the middle
    when ordered by ``key`` (the only one without ``--repeat``), in column order."""
    picked = []
    for worker in doc["workers"]:
        rounds = [r for r in doc["results"]
                  if r["scenario"] == scenario and r["worker"] == worker["label"]
                  and not r["error"] and not r.get("skipped")]
        if rounds:
            rounds.sort(key=lambda r: key(r["metrics"]) or 0.0)
            picked.append(rounds[(len(rounds) - 1) // 2])
    return picked


def _rounds_note(doc: dict[str, Any]) -> str:
    rounds = int(doc["settings"].get("repeat") or 1)
    return f"\n(each class: its median round of {rounds})" if rounds > 1 else ""
