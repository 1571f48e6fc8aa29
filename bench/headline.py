"""The headline table and plot: several lifelong runs merged into one view.

``recall bench headline --results DIR1,DIR2,... --out DIR`` reads each run's results.json
(or, for older runs that kept only their summary, summary.md, parsed back with
:func:`from_summary`), merges the aggregates into rows keyed by dataset x editor x T and
writes DIR/headline.md (one table) and DIR/headline.png (metric vs T per editor, one panel
column per dataset, one row per metric). A later file overrides an earlier one for the same
(dataset, editor, T); each row names the run it came from. Editors run under a protocol
other than ``lifelong`` are labelled ``editor (protocol)``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from recall.bench.lifelong import TABLES, draw_metric
from recall.core.reporting import md_table, pyplot

# (column label, aggregate key): teacher-forced / probability, then greedy generation
COLUMNS = [
    ("Rel TF", "rel_tf"),
    ("Gen TF", "gen_tf"),
    ("Loc TF", "loc_tf"),
    ("Port TF", "port_tf"),
    ("ES", "efficacy_success"),
    ("PS", "paraphrase_success"),
    ("NS", "neighborhood_success"),
    ("Rel gen", "rel_gen"),
    ("Gen gen", "gen_gen"),
    ("Loc gen", "loc_gen"),
    ("Port gen", "port_gen"),
]
PLOTTED = ["rel_tf", "gen_tf", "loc_tf", "port_tf", "rel_gen"]
MISSING = "–"

_TITLE_RE = re.compile(r"^# Lifelong editing: (?P<data>.+) \((?P<format>\w+), protocol (?P<protocol>\w+)\)$")
_CONFIG_RE = re.compile(r"^T = \[(?P<T>[\d, ]*)\], seed (?P<seed>\d+), limit (?P<limit>\w+),.*wall (?P<wall>[\d.]+) s")


def from_summary(text: str) -> dict[str, Any]:
    """Rebuild a results dict (config + aggregates, no per-case rows) from a summary.md that
    :func:`bench.lifelong.summary` wrote; values keep the summary's 3 decimals."""
    lines = text.splitlines()
    title = _TITLE_RE.match(lines[0].strip()) if lines else None
    if title is None:
        raise ValueError("not a lifelong summary.md: the first line must be '# Lifelong editing: DATA (FORMAT, ...)'")
    config: dict[str, Any] = {**title.groupdict(), "source": "summary.md"}
    for line in lines[1:]:
        m = _CONFIG_RE.match(line.strip())
        if m:
            config["T"] = [int(x) for x in m["T"].split(",") if x.strip()]
            config["seed"] = int(m["seed"])
            config["limit"] = None if m["limit"] == "None" else int(m["limit"])
            config["wall_seconds"] = float(m["wall"])
            break
    aggs: dict[str, dict[str, dict[str, float]]] = {}
    labels: dict[str, str] = {}
    header: list[str] = []
    for line in lines:
        line = line.strip()
        if line.startswith("## "):
            labels = dict(TABLES.get(line[3:], []))
            header = []
        elif line.startswith("|") and labels:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not header:
                header = cells
            elif not set(line) <= set("|- "):
                row = dict(zip(header, cells))
                agg = aggs.setdefault(row["editor"], {}).setdefault(row["T"], {})
                for label, value in row.items():
                    if label in labels and value not in ("nan", MISSING, ""):
                        agg[labels[label]] = float(value)
    if not aggs:
        raise ValueError("summary.md has no result tables")
    return {"config": config, "aggregates": aggs}


def load(path: str | Path) -> dict[str, Any]:
    """A run's results: ``path`` is a results.json, or a run directory holding results.json
    or, failing that, summary.md."""
    path = Path(path)
    if path.is_dir():
        for name in ("results.json", "summary.md"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{path} has neither results.json nor summary.md")
    text = path.read_text(encoding="utf-8")
    results = from_summary(text) if path.suffix == ".md" else json.loads(text)
    if "aggregates" not in results or "config" not in results:
        raise ValueError(f"{path}: not a lifelong results file (needs 'config' and 'aggregates')")
    results.setdefault("origin", str(path))
    return results


def merge(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``merged[dataset][editor][T]`` = the aggregates plus ``_run`` (the origin); later runs win.

    ``dataset`` is the run's format; when runs of one format read different files, it is
    ``format:file-stem`` so that different splits never share a row or a plotted line."""
    files: dict[str, set[str]] = {}
    for run in runs:
        files.setdefault(run["config"].get("format", "?"), set()).add(str(run["config"].get("data")))
    merged: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for run in runs:
        cfg = run["config"]
        dataset = cfg.get("format", "?")
        if len(files[dataset]) > 1:
            dataset = f"{dataset}:{Path(str(cfg.get('data'))).stem}"
        protocol = cfg.get("protocol", "lifelong")
        for editor, by_t in run["aggregates"].items():
            label = editor if protocol == "lifelong" else f"{editor} ({protocol})"
            for t, agg in by_t.items():
                merged.setdefault(dataset, {}).setdefault(label, {})[str(t)] = {**agg, "_run": run.get("origin", "")}
    return merged


def table(merged: dict[str, Any], ts: list[int] | None = None) -> str:
    """One markdown table: a row per dataset x editor x T (T in ``ts`` if given), datasets
    sorted, editors in run order, T ascending; only the columns some row has; missing values
    shown as a dash."""
    rows = [
        (dataset, editor, int(t), agg)
        for dataset, eds in sorted(merged.items())
        for editor, by_t in eds.items()  # editors in the order the runs list them
        for t, agg in sorted(by_t.items(), key=lambda item: int(item[0]))
        if ts is None or int(t) in ts
    ]
    cols = [(label, key) for label, key in COLUMNS if any(key in r[3] for r in rows)]

    def cell(agg: dict[str, Any], key: str) -> Any:
        v = agg.get(key)
        return MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else v

    body = [[d, e, t, *[cell(a, k) for _, k in cols]] for d, e, t, a in rows]
    return md_table(["dataset", "editor", "T", *[label for label, _ in cols]], body)


def plot(merged: dict[str, Any], path: str | Path, ts: list[int] | None = None) -> Path:
    """One figure: a panel column per dataset, a panel row per metric of PLOTTED that any run
    has; each panel is metric vs T with one line per editor."""
    plt = pyplot()

    datasets = sorted(merged)
    keep = {
        d: {e: {t: a for t, a in by_t.items() if ts is None or int(t) in ts} for e, by_t in eds.items()}
        for d, eds in merged.items()
    }
    keys = [k for k in PLOTTED if any(k in a for eds in keep.values() for by_t in eds.values() for a in by_t.values())]
    editors = list(dict.fromkeys(e for eds in keep.values() for e in eds))
    colors = {e: f"C{i % 10}" for i, e in enumerate(editors)}
    all_ts = [int(t) for eds in keep.values() for by_t in eds.values() for t in by_t] or [1]
    fig, axes = plt.subplots(len(keys), len(datasets), figsize=(4.5 * len(datasets), 2.6 * len(keys)), squeeze=False)
    for j, dataset in enumerate(datasets):
        for i, key in enumerate(keys):
            ax = axes[i][j]
            if not draw_metric(ax, keep[dataset], key, colors, legend=False):
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlim(min(all_ts) / 1.5, max(all_ts) * 1.5)
            if i == 0:
                ax.set_title(dataset)
    handles = [plt.Line2D([], [], color=colors[e], marker="o", label=e) for e in editors]
    fig.legend(handles=handles, loc="upper center", ncol=len(editors), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run(results: list[str | Path], out: str | Path, ts: list[int] | None = None) -> str:
    """Merge the runs, write out/headline.md and out/headline.png; return the markdown."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load(p) for p in results]
    merged = merge(runs)
    sources = "\n".join(
        f"- `{r['origin']}`: {r['config'].get('data')}, seed {r['config'].get('seed')}, "
        f"limit {r['config'].get('limit')}, T {r['config'].get('T')}"
        for r in runs
    )
    md = "\n".join(
        [
            "# Headline: lifelong editing, all runs merged",
            "",
            "TF = teacher-forced token accuracy; ES/PS/NS = CounterFact probability success; "
            "gen = greedy generation starts with the target (Loc gen: continuation equals the unedited one).",
            "",
            table(merged, ts),
            "",
            "Runs:",
            sources,
            "",
        ]
    )
    (out / "headline.md").write_text(md, encoding="utf-8")
    plot(merged, out / "headline.png", ts)
    return md
