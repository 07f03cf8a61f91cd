"""Statistics and the comparison table: pure functions, no I/O."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Better = Literal["higher", "lower"]


def percentile(samples: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile of ``samples`` by the nearest-rank method.

    The result is always one of the samples (no interpolation), the smallest value such that at
    least ``pct`` percent of the samples are less than or equal to it. ``pct`` is in [0, 100];
    an empty ``samples`` gives NaN.
    """
    if not 0.0 <= pct <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {pct}")
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = math.ceil(pct / 100.0 * len(ordered))
    return ordered[max(rank, 1) - 1]


@dataclass(frozen=True)
class LatencySummary:
    """Latency figures of a set of samples, in milliseconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-friendly form; NaN (no samples) becomes None."""
        return {
            "count": self.count,
            "mean": _finite(self.mean),
            "p50": _finite(self.p50),
            "p90": _finite(self.p90),
            "p99": _finite(self.p99),
            "max": _finite(self.max),
        }


def summarize(samples_s: Sequence[float]) -> LatencySummary:
    """Summarise latencies given in seconds as milliseconds."""
    ms = sorted(s * 1000.0 for s in samples_s)
    if not ms:
        return LatencySummary(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    return LatencySummary(
        count=len(ms),
        mean=math.fsum(ms) / len(ms),
        p50=percentile(ms, 50),
        p90=percentile(ms, 90),
        p99=percentile(ms, 99),
        max=ms[-1],
    )


def jain_index(allocations: Iterable[float]) -> float:
    """Jain's fairness index ``(sum x)^2 / (n * sum x^2)`` of non-negative allocations.

    1.0 means a perfectly even share; ``1/n`` means one party got everything. All zeros (nobody
    got anything) counts as even, 1.0; an empty input gives NaN.
    """
    values = [float(x) for x in allocations]
    if not values:
        return math.nan
    if any(x < 0 for x in values):
        raise ValueError("allocations must be non-negative")
    squares = math.fsum(x * x for x in values)
    if squares == 0.0:
        return 1.0
    total = math.fsum(values)
    return total * total / (len(values) * squares)


def spread(counts: Sequence[int]) -> dict[str, float | int | None]:
    """How evenly ``counts`` (e.g. requests per connection) are spread: min, max, mean, and
    the coefficient of variation (population standard deviation / mean; 0 is even)."""
    if not counts:
        return {"min": None, "max": None, "mean": None, "cv": None}
    mean = math.fsum(counts) / len(counts)
    variance = math.fsum((c - mean) ** 2 for c in counts) / len(counts)
    return {"min": min(counts), "max": max(counts), "mean": mean,
            "cv": math.sqrt(variance) / mean if mean > 0 else None}


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``; None when either is missing, NaN or the baseline is zero."""
    if value is None or baseline is None or math.isnan(value) or math.isnan(baseline):
        return None
    if baseline == 0.0:
        return None
    return value / baseline


@dataclass(frozen=True)
class Row:
    """One line of the comparison table: one metric of one scenario for every worker.

    With repeated rounds (``--repeat``), ``values`` are the medians over the rounds and
    ``round_ratios`` hold each worker's ratio against the baseline in every round that both
    completed: the ratio shown is their median, with their range beside it, because ratios
    taken within one round are what stays comparable on a noisy machine. ``failures`` maps
    the workers whose scenario failed in every round to the failure shown in their cells;
    ``skipped`` the workers that did not run at all to what their cells say instead
    (``not installed``). ``compare`` False: the row has no ratios (see
    :attr:`~.measure.Headline.compare`).
    """

    scenario: str
    metric: str
    unit: str
    better: Better
    values: Mapping[str, float | None]
    round_ratios: Mapping[str, Sequence[float]] | None = None
    failures: Mapping[str, str] | None = None
    skipped: Mapping[str, str] | None = None
    compare: bool = True

    def ratios(self, baseline: str) -> dict[str, float | None]:
        """Each worker's value divided by the baseline worker's value (with rounds: the
        median of the per-round ratios)."""
        if not self.compare:
            return dict.fromkeys(self.values)
        if self.round_ratios is not None:
            return {label: median(self.round_ratios.get(label, ())) for label in self.values}
        base = self.values.get(baseline)
        return {label: ratio(v, base) for label, v in self.values.items()}

    def ratio_range(self, label: str) -> tuple[float, float] | None:
        """Lowest and highest per-round ratio of ``label``; None without rounds."""
        per_round = (self.round_ratios or {}).get(label) if self.compare else None
        return (min(per_round), max(per_round)) if per_round else None


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None (None if there are none)."""
    present = sorted(v for v in values if v is not None and not math.isnan(v))
    if not present:
        return None
    mid = len(present) // 2
    return present[mid] if len(present) % 2 else (present[mid - 1] + present[mid]) / 2


def format_value(value: float | None, unit: str = "") -> str:
    """A number in a width suited to its size: ``12345``, ``123.4``, ``1.23``, ``0.987``,
    ``0.00123``."""
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf"
    magnitude = abs(value)
    if unit == "%" or magnitude >= 1000 or (magnitude >= 100 and value == int(value)):
        text = f"{value:.0f}"
    elif magnitude >= 100:
        text = f"{value:.1f}"
    elif magnitude >= 1 or magnitude == 0:
        text = f"{value:.2f}"
    elif magnitude >= 0.01:
        text = f"{value:.3f}"
    else:
        text = f"{value:.3g}"
    return text + ("%" if unit == "%" else "")


def format_ratio(value: float | None) -> str:
    """``1.23x``, or ``-`` when there is no ratio."""
    if value is None:
        return "-"
    return f"{value:.2f}x"


def format_cell(row: Row, label: str, ratio_value: float | None) -> str:
    """``value (ratio)``, or ``value (ratio, low-high)`` when the row has rounds, or
    ``FAILED: why`` when the worker's scenario failed, or why it did not run
    (``not installed``)."""
    skipped = (row.skipped or {}).get(label)
    if skipped is not None:
        return skipped
    failure = (row.failures or {}).get(label)
    if failure is not None:
        return f"FAILED: {failure}"
    text = f"{format_value(row.values.get(label), row.unit)} ({format_ratio(ratio_value)}"
    spread = row.ratio_range(label)
    if spread is not None and spread[0] != spread[1]:
        text += f", {spread[0]:.2f}-{spread[1]:.2f}"
    return text + ")"


def format_table(rows: Sequence[Row], labels: Sequence[str], baseline: str) -> str:
    """Render rows as a fixed-width text table; each cell is ``value (ratio vs baseline)``."""
    header = ["scenario", "metric", "better", *labels]
    lines: list[list[str]] = [header]
    for row in rows:
        ratios = row.ratios(baseline)
        cells = [row.scenario, f"{row.metric} ({row.unit})" if row.unit else row.metric,
                 row.better]
        cells += [format_cell(row, label, ratios.get(label)) for label in labels]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        text = "  ".join(
            cell.ljust(widths[i]) if i < 3 else cell.rjust(widths[i])
            for i, cell in enumerate(line)
        )
        out.append(text.rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    rounds = any(row.round_ratios is not None for row in rows)
    out.append(f"(value (ratio against {baseline}"
               + ("; median of the rounds, ratios taken within each round, their range" if rounds
                  else "") + "); 'better' says which direction is better)")
    return "\n".join(out)


def format_markdown_table(rows: Sequence[Row], labels: Sequence[str], baseline: str) -> str:
    """The same table as Markdown, for the docs."""
    out = ["| scenario | metric | better | " + " | ".join(labels) + " |",
           "|---|---|---|" + "---:|" * len(labels)]
    for row in rows:
        ratios = row.ratios(baseline)
        metric = f"{row.metric} ({row.unit})" if row.unit else row.metric
        # A failure text may hold a path with a pipe in it.
        cells = [format_cell(row, label, ratios.get(label)).replace("|", "\\|")
                 for label in labels]
        out.append(f"| {row.scenario} | {metric} | {row.better} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value
