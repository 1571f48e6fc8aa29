"""The HTTP fuzzer (``recall.bench.fuzz``) over a real Runtime: a few hundred generated,
mostly malformed requests to every endpoint; none may produce a 500 (or an exception, or a
truncated event stream), and no refused write may change the store."""

from __future__ import annotations

import json

import pytest
from conftest import open_cached_runtime

from recall.bench.fuzz import run_fuzz, seed_runtime
from recall.server import ServerConfig, create_app

TOKEN = "fuzz-token-0123456789abcdef"


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzed_requests_never_fail_the_server(loaded_model, encoder, tmp_path, seed):
    rt = open_cached_runtime(tmp_path / "store", loaded_model, encoder)
    try:
        seed_runtime(rt)
        app = create_app(rt, ServerConfig(token=TOKEN, model_name="fuzz-model"))
        result = run_fuzz(app, 300, seed=seed, token=TOKEN)
    finally:
        rt.close()
    assert result["requests"] == sum(result["by_status"].values()) == 300
    # the fuzzer reaches the working paths too, not only the refusals
    assert any(s.startswith("2") and n > 0 for s, n in result["by_status"].items()), result["by_status"]
    assert {"POST /v1/completions", "POST /v1/edits", "POST /v1/edits/import"} <= result["by_endpoint"].keys()
    report = json.dumps(result["distinct_failures"], indent=1, default=repr)
    assert result["server_errors"] == [], report
    assert result["store_changed_on_reject"] == [], json.dumps(result["store_changed_on_reject"], indent=1)
