"""Scaling efficiency of multi-node benchmark results: a markdown table and a PNG plot.

Input rows are dicts with at least `nodes`, `zero_stage` and `real_tokens_per_s` (other keys are
ignored; a row whose tokens/s is missing or None, e.g. a failed job, is listed but not scored).
Per ZeRO stage, with T(n) the real tokens/s on n nodes:

    speedup(n)    = T(n) / T(1)
    efficiency(n) = T(n) / (n * T(1))

A stage without a one-node row has no reference, so its speedups and efficiencies are None.
When several rows share (stage, nodes), the fastest one counts. A row with `finished` False (a
job still running, cancelled or failed: its rate comes from the steps logged so far) is shown,
marked, but neither scored nor taken as a reference; rows without the key count as finished.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError

REQUIRED_KEYS = ("nodes", "zero_stage", "real_tokens_per_s")


def _check(rows: list[dict]) -> None:
    for index, row in enumerate(rows):
        missing = [key for key in REQUIRED_KEYS if key not in row]
        if missing:
            raise DataError(f"scaling row lacks {', '.join(missing)}", row=index,
                            column=missing[0])
        if not isinstance(row["nodes"], int) or row["nodes"] < 1:
            raise DataError(f"nodes must be a positive integer, got {row['nodes']!r}", row=index,
                            column="nodes")


def scaling_points(rows: list[dict]) -> list[dict]:
    """One entry per (zero_stage, nodes), sorted, with tokens/s, whether it finished, speedup
    and efficiency (None unless it and its stage's one-node reference finished)."""
    _check(rows)
    # (rate, finished) per point: a finished rate wins over an unfinished one, then the faster.
    best: dict[tuple[int, int], tuple[float | None, bool]] = {}
    for row in rows:
        key = (int(row["zero_stage"]), int(row["nodes"]))
        rate = row["real_tokens_per_s"]
        rate = float(rate) if rate is not None and rate > 0 else None
        candidate = (rate, bool(row.get("finished", True)))
        held = best.get(key)
        if held is None or _better(candidate, held):
            best[key] = candidate
    points = []
    for (stage, nodes), (rate, finished) in sorted(best.items()):
        reference, reference_finished = best.get((stage, 1), (None, False))
        scored = rate is not None and finished and reference is not None and reference_finished
        points.append({"zero_stage": stage, "nodes": nodes, "real_tokens_per_s": rate,
                       "finished": finished,
                       "speedup": rate / reference if scored else None,
                       "efficiency": rate / (nodes * reference) if scored else None})
    return points


def _better(candidate: tuple[float | None, bool], held: tuple[float | None, bool]) -> bool:
    """Whether a (rate, finished) reading replaces the one held for its point."""
    (rate, finished), (held_rate, held_finished) = candidate, held
    if rate is None:
        return False
    if held_rate is None or finished != held_finished:
        return held_rate is None or finished
    return rate > held_rate


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def scaling_table(rows: list[dict]) -> str:
    """Markdown: ZeRO stage, nodes, real tokens/s, speedup over one node, scaling efficiency."""
    lines = ["| ZeRO stage | nodes | real tok/s | speedup (x) | efficiency |",
             "|---|---|---|---|---|"]
    points = scaling_points(rows)
    for p in points:
        rate = _fmt(p["real_tokens_per_s"], ",.0f") + ("" if p["finished"] else "*")
        lines.append(f"| {p['zero_stage']} | {p['nodes']} | {rate} "
                     f"| {_fmt(p['speedup'], '.2f')} | {_fmt(p['efficiency'], '.1%')} |")
    if not all(p["finished"] for p in points):
        lines += ["", "* its job has not completed (running, failed or cancelled): the rate of "
                  "the steps logged so far, not scored and no one-node reference"]
    return "\n".join(lines)


def scaling_plot(rows: list[dict], png_path: str | Path) -> Path:
    """Two panels per ZeRO stage: tokens/s against nodes (dashed: linear from one node), and
    scaling efficiency. Drawn with the Agg canvas directly, so no global backend is switched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = scaling_points(rows)
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    rate_axes, efficiency_axes = figure.subplots(1, 2)
    for stage in sorted({p["zero_stage"] for p in points}):
        # Finished points only: a partial rate drawn on the line read as a measurement.
        mine = [p for p in points if p["zero_stage"] == stage and p["real_tokens_per_s"]
                and p["finished"]]
        if not mine:
            continue
        nodes = [p["nodes"] for p in mine]
        line, = rate_axes.plot(nodes, [p["real_tokens_per_s"] for p in mine], marker="o",
                               label=f"ZeRO-{stage}")
        one = next((p for p in mine if p["nodes"] == 1), None)
        if one is not None:
            rate_axes.plot(nodes, [n * one["real_tokens_per_s"] for n in nodes], linestyle="--",
                           color=line.get_color(), alpha=0.5)
            scored = [p for p in mine if p["efficiency"] is not None]
            efficiency_axes.plot([p["nodes"] for p in scored],
                                 [100 * p["efficiency"] for p in scored], marker="o",
                                 color=line.get_color(), label=f"ZeRO-{stage}")
    rate_axes.set(xlabel="nodes", ylabel="real tokens/s", title="Throughput (dashed: linear)")
    best = max((100 * p["efficiency"] for p in points if p.get("efficiency")), default=100)
    # Superlinear readings (cache effects, a noisy shared machine) must stay on the chart.
    efficiency_axes.set(xlabel="nodes", ylabel="scaling efficiency (%)", title="Efficiency",
                        ylim=(0, max(110, 1.1 * best)))
    node_counts = sorted({p["nodes"] for p in points})
    for axes in (rate_axes, efficiency_axes):
        axes.grid(alpha=0.3)
        axes.set_xticks(node_counts)  # node counts are whole numbers
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
    figure.tight_layout()
    path = Path(png_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
