"""The headline merge (table + plot) on small synthetic results dicts, and the summary.md
round trip used for runs that kept only their summary."""

from __future__ import annotations

import json

import pytest

from recall.bench import headline, lifelong


def _results(fmt: str, aggs: dict, protocol: str = "lifelong") -> dict:
    return {
        "config": {
            "data": f"data/{fmt}.json",
            "format": fmt,
            "n_cases_available": 10,
            "skipped_records": [],
            "T": sorted({int(t) for by_t in aggs.values() for t in by_t}),
            "limit": None,
            "seed": 0,
            "protocol": protocol,
        },
        "aggregates": aggs,
        "wall_seconds": 12.0,
    }


CF = _results(
    "counterfact",
    {
        "unedited": {"1": {"rel_tf": 0.0, "loc_tf": 1.0, "efficacy_success": 0.25, "rel_gen": 0.0, "n_cases": 1}},
        "recall": {
            "1": {"rel_tf": 1.0, "loc_tf": 1.0, "efficacy_success": 1.0, "rel_gen": 1.0, "n_cases": 1},
            "100": {"rel_tf": 0.5, "loc_tf": 0.75, "efficacy_success": 0.875, "rel_gen": 0.5, "n_cases": 100},
        },
    },
)
ZSRE = _results("zsre", {"recall": {"1": {"rel_tf": 1.0, "port_tf": 0.25, "loc_gen": float("nan"), "n_cases": 1}}})


def _rows(md: str) -> list[list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| dataset")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_merge_keys_rows_by_dataset_editor_t_and_later_runs_win():
    newer = _results("counterfact", {"recall": {"100": {"rel_tf": 0.625, "n_cases": 100}}})
    newer["origin"] = "new"
    merged = headline.merge([CF, ZSRE, newer])
    assert set(merged) == {"counterfact", "zsre"}
    assert set(merged["counterfact"]) == {"unedited", "recall"}
    cell = merged["counterfact"]["recall"]["100"]
    assert cell["rel_tf"] == 0.625 and cell["_run"] == "new"
    assert merged["counterfact"]["recall"]["1"]["rel_tf"] == 1.0  # untouched by the newer run
    batch = headline.merge([_results("zsre", {"ft-l": {"10": {"rel_tf": 0.5}}}, protocol="batch")])
    assert list(batch["zsre"]) == ["ft-l (batch)"]
    other_split = _results("zsre", {"recall": {"1000": {"rel_tf": 0.75}}})
    other_split["config"]["data"] = "data/zsre_train.json"
    assert set(headline.merge([ZSRE, other_split])) == {"zsre:zsre", "zsre:zsre_train"}


def test_table_has_a_row_per_dataset_editor_t_and_dashes_for_missing():
    md = headline.table(headline.merge([CF, ZSRE]))
    header = md.splitlines()[0]
    for col in ("Rel TF", "Loc TF", "Port TF", "ES", "Rel gen", "Loc gen"):
        assert col in header
    assert "PS" not in header  # no run has it
    rows = _rows(md)
    assert [r[:3] for r in rows] == [
        ["counterfact", "unedited", "1"],
        ["counterfact", "recall", "1"],
        ["counterfact", "recall", "100"],
        ["zsre", "recall", "1"],
    ]
    cols = [c.strip() for c in header.strip("|").split("|")]
    zsre = dict(zip(cols, rows[3]))
    assert zsre["Port TF"] == "0.250" and zsre["ES"] == headline.MISSING and zsre["Loc gen"] == headline.MISSING
    cf100 = dict(zip(cols, rows[2]))
    assert cf100["Rel TF"] == "0.500" and cf100["ES"] == "0.875" and cf100["Port TF"] == headline.MISSING
    only_100 = _rows(headline.table(headline.merge([CF, ZSRE]), ts=[100]))
    assert [r[:3] for r in only_100] == [["counterfact", "recall", "100"]]


def test_summary_round_trip_keeps_aggregates():
    res = _results(
        "counterfact",
        {
            "recall": {
                "10": {"rel_tf": 0.95, "gen_tf": 0.8, "efficacy_success": 1.0, "neighborhood_success": 0.3},
                "100": {"rel_tf": 0.5, "perplexity": 12.25, "edit_seconds": 2.0},
            }
        },
    )
    back = headline.from_summary(lifelong.summary(res))
    assert back["config"]["format"] == "counterfact" and back["config"]["T"] == [10, 100]
    assert back["config"]["seed"] == 0 and back["config"]["limit"] is None
    assert back["aggregates"]["recall"]["10"] == res["aggregates"]["recall"]["10"]
    assert back["aggregates"]["recall"]["100"] == {"rel_tf": 0.5, "perplexity": 12.25, "edit_seconds": 2.0}
    with pytest.raises(ValueError, match="not a lifelong summary"):
        headline.from_summary("# something else\n")


def test_load_prefers_results_json_then_summary(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "results.json").write_text(json.dumps(CF), encoding="utf-8")
    (a / "summary.md").write_text("ignored", encoding="utf-8")
    (b / "summary.md").write_text(lifelong.summary(ZSRE), encoding="utf-8")
    assert headline.load(a)["aggregates"] == CF["aggregates"]
    assert headline.load(b)["aggregates"]["recall"]["1"]["port_tf"] == 0.25
    with pytest.raises(FileNotFoundError):
        headline.load(tmp_path)
    (tmp_path / "bad.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="needs 'config' and 'aggregates'"):
        headline.load(tmp_path / "bad.json")


def test_run_writes_table_and_one_plot(tmp_path):
    (tmp_path / "cf").mkdir()
    (tmp_path / "cf" / "results.json").write_text(json.dumps(CF), encoding="utf-8")
    (tmp_path / "zsre.json").write_text(json.dumps(ZSRE), encoding="utf-8")
    md = headline.run([tmp_path / "cf", tmp_path / "zsre.json"], tmp_path / "out")
    assert (tmp_path / "out" / "headline.md").read_text(encoding="utf-8") == md
    assert "| counterfact | recall   | 100" in md and "zsre.json" in md
    assert (tmp_path / "out" / "headline.png").stat().st_size > 5000
