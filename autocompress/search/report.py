"""A search's report: ``report.png`` (matplotlib) and ``report.html`` (plotly, self-contained).

    paths = write_report(result, "autocompress-search")   # {"png": ..., "html": ...}

report.png: left, every finished trial as validation accuracy against speedup
(feasible and infeasible marked apart), the accuracy floor, the Pareto front, the
baseline at 1.0x and the best trial; right, the best policy's choices per layer.
report.html: the summary, baseline vs best, the Pareto table, an interactive Pareto
scatter, Optuna's optimisation history, the best policy JSON and the per-layer table.
It embeds plotly.js and the PNG, so it opens offline. The plotting libraries are
imported here, lazily: a search never needs them.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path
from typing import Any

from autocompress.search.result import SearchResult, TrialRecord, summarize_policy
from autocompress.search_spaces.knobs import KNOBS, Knob

log = logging.getLogger(__name__)


def _column_knobs() -> list[Knob]:
    """The knobs with a per-layer report column, in registry order (read when drawn: a knob
    registered later gets its column too)."""
    return [k for k in KNOBS.values() if k.column]


def knob_columns() -> tuple[str, ...]:
    """The per-layer table's columns after "layer": weight bits, activation bits, pruning ratio."""
    return tuple(k.column for k in _column_knobs())


def write_report(result: SearchResult, directory: str | Path) -> dict[str, Path]:
    """Write ``report.png`` and ``report.html`` for ``result`` into ``directory``;
    returns {"png": path, "html": path}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    png = _write_png(result, directory / "report.png")
    page = _write_html(result, directory / "report.html", png)
    return {"png": png, "html": page}


# -- what is plotted ----------------------------------------------------------------------
def _complete(result: SearchResult) -> list[TrialRecord]:
    return [
        t
        for t in result.trials
        if t.state == "COMPLETE"
        and _number(getattr(t.measurements, "speedup", None)) is not None
        and _number(getattr(t.measurements, "accuracy", None)) is not None
    ]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _front(result: SearchResult) -> list[TrialRecord]:
    """The Pareto trials in speedup order (to draw as one line)."""
    return sorted(
        (t for t in result.pareto if t.measurements is not None), key=lambda t: t.measurements.speedup
    )


def layer_choices(result: SearchResult) -> list[dict[str, Any]]:
    """The best policy per layer: [{"layer", *knob_columns()}] (weight bits, activation
    bits, pruning ratio; bits None = float). From the policy resolved over the model's
    layers when the result knows them, else from the trial's parameters (a key
    ``knob:layer`` sets that layer, or for pruning the group starting there; a key
    without ``:`` sets every layer, shown as one row "(all layers)")."""
    best = result.best
    if best is None:
        return []
    layers = list(result.layers)
    knobs = _column_knobs()
    columns = [k.column for k in knobs]
    if best.policy is not None and layers:
        return [
            {"layer": name, **{k.column: k.read(lp) for k in knobs}}
            for name, lp in best.policy.resolve(layers).items()
        ]
    column_of = {k.name: k.column for k in knobs}
    per_layer: dict[str, dict[str, Any]] = {}
    everywhere: dict[str, Any] = {}
    for key, value in best.params.items():
        knob, _, layer = key.partition(":")
        if knob not in column_of:
            continue
        if layer:
            per_layer.setdefault(layer, {})[column_of[knob]] = value
        else:
            everywhere[column_of[knob]] = value
    if not per_layer:
        return [{"layer": "(all layers)", **{c: everywhere.get(c) for c in columns}}] if everywhere else []
    rows = []
    for layer, values in per_layer.items():
        merged = {**everywhere, **values}
        rows.append({"layer": layer, **{c: merged.get(c) for c in columns}})
    return rows


def _format_choice(column: str, value: Any) -> str:
    if column == "pruning ratio":
        return "-" if value is None else ("0" if not value else f"{100 * value:g}%")
    return "float" if value is None else str(value)


# -- PNG ----------------------------------------------------------------------------------
def _write_png(result: SearchResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    rows = layer_choices(result)
    height = max(5.0, 0.28 * len(rows) + 1.5)
    fig = Figure(figsize=(14, height), layout="constrained")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    _plot_trials(left, result)
    _plot_choices(right, result, rows)
    fig.suptitle(f"{result.study_name}: {result.message}"[:160], fontsize=10)
    fig.savefig(path, dpi=110)
    return path


def _plot_trials(ax, result: SearchResult) -> None:
    trials = _complete(result)
    feasible = [t for t in trials if t.feasible]
    infeasible = [t for t in trials if not t.feasible]

    def xy(ts):
        return [t.measurements.speedup for t in ts], [t.measurements.accuracy for t in ts]

    if infeasible:
        ax.scatter(
            *xy(infeasible), marker="x", color="tab:red", alpha=0.7, label=f"infeasible ({len(infeasible)})"
        )
    if feasible:
        ax.scatter(
            *xy(feasible), marker="o", color="tab:blue", alpha=0.7, label=f"feasible ({len(feasible)})"
        )
    front = _front(result)
    if front:
        ax.plot(*xy(front), color="tab:blue", linewidth=1.2, label="Pareto front")
        for t in front:
            ax.annotate(
                f"#{t.number}",
                (t.measurements.speedup, t.measurements.accuracy),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color="tab:blue",
            )
    base = _number(result.baseline.get("accuracy"))
    if base is not None:
        ax.scatter([1.0], [base], marker="*", s=180, color="black", zorder=5, label=f"baseline ({base:.4f})")
    if result.floor is not None:
        ax.axhline(
            result.floor,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"accuracy floor {result.floor:.4f}",
        )
    best = result.best
    if best is not None and any(t.number == best.number for t in trials):
        ax.scatter(
            [best.measurements.speedup],
            [best.measurements.accuracy],
            s=260,
            facecolors="none",
            edgecolors="tab:green",
            linewidths=2.2,
            zorder=6,
            label=f"best: #{best.number}, {best.measurements.speedup:.2f}x"
            + ("" if result.feasible else " (infeasible)"),
        )
    ax.set_xlabel("speedup over the baseline (latency on the target)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"{len(trials)} finished trials (pruned and failed ones not shown)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.6)


def _plot_choices(ax, result: SearchResult, rows: list[dict[str, Any]]) -> None:
    best = result.best
    if not rows:
        ax.axis("off")
        text = (
            "no best policy"
            if best is None
            else f"best policy (trial {best.number}):\n{summarize_policy(best.params)}"
        )
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, wrap=True)
        return
    import numpy as np

    # Colour = how much each knob compresses: fewer bits / more pruning is darker.
    columns = knob_columns()
    shade = np.zeros((len(rows), len(columns)))
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            value = row[column]
            if column == "pruning ratio":
                shade[i, j] = value or 0.0
            elif column.endswith("bits") and isinstance(value, int):  # another knob's column stays white
                shade[i, j] = 0.25 + (8 - value) / 6 * 0.6
    ax.imshow(shade, cmap="Blues", vmin=0.0, vmax=1.2, aspect="auto")
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            ax.text(j, i, _format_choice(column, row[column]), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(columns)), [c.replace(" ", "\n") for c in columns], fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(rows)), [r["layer"] for r in rows], fontsize=8)
    ax.tick_params(length=0)
    extra = (
        f"; student {best.policy.student.family}"
        if best.policy is not None and best.policy.student is not None
        else ""
    )
    ax.set_title(f"best policy per layer (trial {best.number}{extra})", fontsize=10)


# -- HTML ---------------------------------------------------------------------------------
def _write_html(result: SearchResult, path: Path, png: Path | None) -> Path:
    import plotly.io as pio

    figures = []
    pareto = _pareto_figure(result)
    figures.append(("Trials: accuracy against speedup (hover for the policy)", pareto))
    history = _history_figure(result)
    if history is not None:
        figures.append(("Optimisation history (Optuna)", history))
    config = {"displaylogo": False, "responsive": True}
    plots = []
    for i, (title, fig) in enumerate(figures):
        # plotly.js is embedded once, in the first figure: the page needs no network.
        div = pio.to_html(
            fig, full_html=False, include_plotlyjs=(i == 0), include_mathjax=False, config=config
        )
        plots.append(f"<h2>{html.escape(title)}</h2>\n{div}")
    best = result.best
    policy_json = best.policy.to_json() if best is not None and best.policy is not None else "(none)"
    image = ""
    if png is not None and png.exists():
        encoded = base64.b64encode(png.read_bytes()).decode()
        source = f"data:image/png;base64,{encoded}"
        image = f'<h2>Overview</h2>\n<img alt="search report" style="max-width:100%" src="{source}">'
    sections = [
        f"<h1>autocompress search: {html.escape(result.study_name)}</h1>",
        f"<pre>{html.escape(result.summary())}</pre>",
        "<h2>Baseline vs best</h2>",
        _comparison_table(result),
        "<h2>Pareto front (feasible trials, best first)</h2>",
        f"<pre>{html.escape(result.pareto_table())}</pre>",
        *plots,
        image,
        f"<h2>Best policy{'' if best is None else f' (trial {best.number})'}</h2>",
        _choices_table(layer_choices(result)),
        f"<pre>{html.escape(policy_json)}</pre>",
        f"<p class='meta'>study {html.escape(result.study_name)} in {html.escape(str(result.storage))}; "
        f"strategy {html.escape(result.strategy)}; objectives {html.escape(json.dumps(result.objectives))}</p>",
    ]
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>autocompress search {html.escape(result.study_name)}</title>\n<style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(s for s in sections if s)
        + "\n</body></html>\n"
    )
    path.write_text(page, encoding="utf-8")
    return path


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 12px; }
table { border-collapse: collapse; font-size: 13px; margin-bottom: 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.meta { color: #777; font-size: 12px; }
"""


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"


def _drop_rows(result: SearchResult) -> list[list[str]]:
    """The delivered policy's accuracy drop with its bounds: where it was selected, where it
    was confirmed, and on the test split (with whether the promise held there)."""

    def bounds(d: Any) -> str:
        return f"{100 * d.drop:.2f} pt ({d.confidence:.0%} bounds {100 * d.low:.2f}..{100 * d.high:.2f}, n={d.samples})"

    rows = []
    m = result.best.measurements if result.best is not None else None
    if m is not None:
        rows.append(["accuracy drop, validation", "", bounds(m.drop), ""])
    confirmed = [c for c in result.confirmation or () if c.trial == getattr(result.best, "number", None)]
    if confirmed and confirmed[-1].drop is not None:
        verdict = "confirmed" if confirmed[-1].passed else "NOT confirmed"
        rows.append(["accuracy drop, held-back confirmation", "", bounds(confirmed[-1].drop), verdict])
    test = result.test or {}
    if "drop_high" in test:
        verdict = "promise held" if test["held"] else "promise NOT held"
        rows.append(
            [
                "accuracy drop, test",
                "",
                f"{100 * test['drop']:.2f} pt ({test['confidence']:.0%} bounds {100 * test['drop_low']:.2f}.."
                f"{100 * test['drop_high']:.2f}, n={test['samples']})",
                verdict,
            ]
        )
    return rows


def _comparison_table(result: SearchResult) -> str:
    base = result.baseline
    m = (
        result.best.measurements.to_dict()
        if result.best is not None and result.best.measurements is not None
        else {}
    )
    test = result.test or {}

    def fmt(value: Any, kind: str) -> str:
        value = _number(value)
        if value is None:
            return "-"
        return {
            "pct": f"{100 * value:.2f}%",
            "ms": f"{value:.4f}",
            "x": f"{value:.2f}x",
            "int": f"{int(value):,}",
        }[kind]

    def ratio(a: Any, b: Any) -> str:
        a, b = _number(a), _number(b)
        return f"{b / a:.3g}x" if a and b is not None else "-"

    rows = [
        [
            "validation accuracy",
            fmt(base.get("accuracy"), "pct"),
            fmt(m.get("accuracy"), "pct"),
            _delta(base.get("accuracy"), m.get("accuracy")),
        ],
        [
            "test accuracy",
            fmt(test.get("baseline_accuracy"), "pct"),
            fmt(test.get("accuracy"), "pct"),
            _delta(test.get("baseline_accuracy"), test.get("accuracy")),
        ],
        *_drop_rows(result),
        [
            "latency ms (trial measurement)",
            fmt(base.get("latency_ms"), "ms"),
            fmt(m.get("latency_ms"), "ms"),
            ratio(base.get("latency_ms"), m.get("latency_ms")),
        ],
        ["speedup (trial measurement)", "1.00x", fmt(m.get("speedup"), "x"), ""],
    ]
    if test:
        rows += [
            [
                "latency ms (test re-check)",
                fmt(test.get("baseline_latency_ms"), "ms"),
                fmt(test.get("latency_ms"), "ms"),
                ratio(test.get("baseline_latency_ms"), test.get("latency_ms")),
            ],
            ["speedup (test re-check)", "1.00x", fmt(test.get("speedup"), "x"), ""],
        ]
    rows += [
        [
            "IR size bytes",
            fmt(base.get("size_bytes"), "int"),
            fmt(m.get("size_bytes"), "int"),
            ratio(base.get("size_bytes"), m.get("size_bytes")),
        ],
        [
            "parameters",
            fmt(base.get("parameters"), "int"),
            fmt(m.get("parameters"), "int"),
            ratio(base.get("parameters"), m.get("parameters")),
        ],
        [
            "FLOPs",
            fmt(base.get("flops"), "int"),
            fmt(m.get("flops"), "int"),
            ratio(base.get("flops"), m.get("flops")),
        ],
    ]
    label = "best" if result.best is None else f"best (trial {result.best.number})"
    return _table(["", "baseline", label, "best / baseline"], rows)


def _delta(base: Any, value: Any) -> str:
    base, value = _number(base), _number(value)
    return "-" if base is None or value is None else f"{100 * (value - base):+.2f} pt"


def _choices_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(no per-layer choices)</p>"
    columns = knob_columns()
    return _table(
        ["layer", *columns], [[r["layer"], *(_format_choice(c, r[c]) for c in columns)] for r in rows]
    )


def _pareto_figure(result: SearchResult):
    import plotly.graph_objects as go

    fig = go.Figure()
    trials = _complete(result)

    def hover(t: TrialRecord) -> str:
        m = t.measurements
        return f"trial {t.number}<br>accuracy {m.accuracy:.4f}, speedup {m.speedup:.2f}x<br>" + html.escape(
            summarize_policy(t.params)
        )

    for label, group, symbol, colour in (
        ("feasible", [t for t in trials if t.feasible], "circle", "#1f77b4"),
        ("infeasible", [t for t in trials if not t.feasible], "x", "#d62728"),
    ):
        if group:
            fig.add_trace(
                go.Scatter(
                    x=[t.measurements.speedup for t in group],
                    y=[t.measurements.accuracy for t in group],
                    mode="markers",
                    name=f"{label} ({len(group)})",
                    marker={"symbol": symbol, "size": 9, "color": colour},
                    text=[hover(t) for t in group],
                    hovertemplate="%{text}<extra></extra>",
                )
            )
    front = _front(result)
    if front:
        fig.add_trace(
            go.Scatter(
                x=[t.measurements.speedup for t in front],
                y=[t.measurements.accuracy for t in front],
                mode="lines",
                name="Pareto front",
                line={"color": "#1f77b4"},
                hoverinfo="skip",
            )
        )
    base = _number(result.baseline.get("accuracy"))
    if base is not None:
        fig.add_trace(
            go.Scatter(
                x=[1.0],
                y=[base],
                mode="markers",
                name="baseline",
                marker={"symbol": "star", "size": 16, "color": "black"},
                hovertemplate=f"baseline<br>accuracy {base:.4f}, speedup 1.00x<extra></extra>",
            )
        )
    best = result.best
    if best is not None and any(t.number == best.number for t in trials):
        fig.add_trace(
            go.Scatter(
                x=[best.measurements.speedup],
                y=[best.measurements.accuracy],
                mode="markers",
                name=f"best (#{best.number})",
                marker={"size": 20, "color": "rgba(0,0,0,0)", "line": {"color": "#2ca02c", "width": 3}},
                text=[hover(best)],
                hovertemplate="%{text}<extra>best</extra>",
            )
        )
    if result.floor is not None:
        fig.add_hline(
            y=result.floor,
            line_dash="dash",
            line_color="#d62728",
            annotation_text=f"accuracy floor {result.floor:.4f}",
            annotation_position="bottom right",
        )
    fig.update_layout(
        xaxis_title="speedup over the baseline",
        yaxis_title="validation accuracy",
        height=520,
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def _history_figure(result: SearchResult):
    """Optuna's optimisation history of the study, or None if the study cannot be loaded."""
    try:
        import warnings

        import optuna

        from autocompress.search.storage import open_storage

        url = str(result.storage)
        for prefix in ("sqlite:///", "journal:"):  # opening a missing file would create it
            if url.startswith(prefix) and not Path(url.removeprefix(prefix)).is_file():
                return None
        storage = open_storage(url, heartbeat_interval=None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.load_study(study_name=result.study_name, storage=storage)
            name = result.objectives[0]["name"] if result.objectives else "objective"
            if len(study.directions) > 1:  # the history of the first objective
                fig = optuna.visualization.plot_optimization_history(
                    study, target=lambda t: t.values[0], target_name=name
                )
            else:
                fig = optuna.visualization.plot_optimization_history(study, target_name=name)
        fig.update_layout(height=450)
        return fig
    except Exception as error:  # the plot is optional; the report is not
        log.info("report: no optimisation history (%s: %s)", type(error).__name__, error)
        return None
