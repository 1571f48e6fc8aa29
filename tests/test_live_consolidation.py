"""Periodic consolidation of a live server: a real HTTP server on a real store, a scheduled job
in a child process, requests answered while it runs and after it, each naming the checkpoint
whose weights answered; a rollback made by another process is served without a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from conftest import FACT_PROMPT, FACT_SUBJECT, FAST_BOUNDS, FAST_BOUNDS_ARGS, child_env

from recall.core.errors import ConsolidationError
from recall.server import ServerConfig, create_app
from recall.server.background import running
from recall.server.schedule import ConsolidationSchedule, ScheduledConsolidation, parse_duration

FAST_MEMIT = str(Path(__file__).parent / "data" / "memit_fast.json")
FACTS = [
    (FACT_PROMPT, "English", FACT_SUBJECT),
    ("The official religion of Edwin of Northumbria is", "Islam", "Edwin of Northumbria"),
]
PARAPHRASE = "Danielle Darrieux's mother tongue is"


def _ask(client: httpx.Client, prompt: str) -> tuple[str, str, str]:
    r = client.post("/v1/completions", json={"model": "recall-llama", "prompt": prompt, "max_tokens": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recall_checkpoint"] == body["system_fingerprint"] == r.headers["X-Recall-Checkpoint"]
    return body["choices"][0]["text"], body["system_fingerprint"], ",".join(body["recall_edits"])


def test_parse_duration():
    assert parse_duration("90") == 90 and parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400
    for bad in ("", "6 hours", "-5", "0s", "h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        ConsolidationSchedule(60, method="mend-xl")


def test_the_job_command_carries_the_acceptance_bounds(make_runtime, store_dir):
    from recall.methods.consolidation import ConsolidationParams

    rt = make_runtime(store_dir)
    bounds = ConsolidationParams(min_probe_agreement=0.8, max_ppl_ratio=1.2, probe_texts=5, probe_tokens=64)
    cmd = ScheduledConsolidation(rt, ConsolidationSchedule(60, method="memit", bounds=bounds)).command()
    flags = dict(zip(cmd[5::2], cmd[6::2]))
    assert cmd[3:5] == ["consolidate", str(rt.memory.store.path)]
    assert {k: flags[k] for k in ("--min-probe-agreement", "--max-ppl-ratio", "--probe-texts", "--probe-tokens")} == {
        "--min-probe-agreement": "0.8", "--max-ppl-ratio": "1.2", "--probe-texts": "5", "--probe-tokens": "64"}
    # the CLI the command runs refuses a probe set the corpus does not have (exit 2, nothing run)
    from typer.testing import CliRunner

    from recall.cli import app

    bad = CliRunner().invoke(app, ["consolidate", str(store_dir), "--probe-texts", "41"])
    assert bad.exit_code == 2 and "probe-texts" in bad.output


def test_bad_job_settings_fail_at_start_up(make_runtime, store_dir, tmp_path):
    rt = make_runtime(store_dir)
    bad = tmp_path / "bad.json"
    bad.write_text('{"no_such_field": 1}')
    for path in (str(bad), str(tmp_path / "missing.json")):
        with pytest.raises(ConsolidationError, match="scheduled consolidation"):
            ScheduledConsolidation(rt, ConsolidationSchedule(60, method="memit", hparams=path))
    assert rt.edits("active") == [] and rt.memory.store.get_meta("checkpoint_head") is None


def test_scheduled_job_runs_while_the_server_answers(make_runtime, store_dir):
    rt = make_runtime(store_dir)
    for p, t, s in FACTS:
        rt.add_edit(prompt=p, target=t, subject=s)
    jobs = ScheduledConsolidation(
        rt, ConsolidationSchedule(
            every_s=1.0, min_edits=1, method="memit", batch_size=2, hparams=FAST_MEMIT, bounds=FAST_BOUNDS
        ),
        device="cpu",
    )
    app = create_app(rt, ServerConfig(model_name="recall-llama"), consolidation=jobs)
    seen: list[tuple[str, str, str]] = []
    with running(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        text, served, _ = _ask(client, FACT_PROMPT)
        assert served == "base" and text.strip().startswith("English")  # from memory
        deadline = time.monotonic() + 300
        while jobs.status.runs == 0 or jobs.status.running:  # ask all along the job
            assert time.monotonic() < deadline, jobs.as_dict()
            seen.append(_ask(client, FACT_PROMPT))
            time.sleep(0.2)
        status = client.get("/health").json()["consolidation"]
        assert status["history"][0]["exit"] == 0 and status["history"][0]["accepted"], status
        head = rt.memory.store.get_meta("checkpoint_head")
        assert head and status["history"][0]["checkpoint"] == head
        during = [s for _, s, _ in seen]
        assert len(seen) >= 3 and set(during) <= {"base", head}  # old or new weights, never a mix
        assert all(t.strip().startswith("English") for t, _, _ in seen)  # every answer right meanwhile

        # after the job: the new weights answer, and the memory copy still covers a paraphrase
        text, served, edits = _ask(client, FACT_PROMPT)
        assert served == head and text.strip().startswith("English")
        assert client.get("/health").json()["checkpoint"] == head
        consolidated = {e.id for e in rt.edits("consolidated")}
        assert consolidated and set(edits.split(",")) & consolidated
        text, served, _ = _ask(client, PARAPHRASE)
        assert served == head and text.strip().startswith("English")

        # a rollback by another process: the running server serves the base weights again
        jobs.stop()
        out = subprocess.run(
            [sys.executable, "-m", "recall", "rollback", str(store_dir), "base", "--device", "cpu"],
            capture_output=True, text=True, env=child_env(), timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        text, served, _ = _ask(client, FACT_PROMPT)
        assert served == "base" and text.strip().startswith("English")  # from memory again
        assert {e.id for e in rt.edits("active")} >= consolidated


def test_a_request_never_sees_weights_change_under_it(make_runtime, store_dir):
    """Weights switch only between worker calls: requests racing a head change from another
    thread all get one of the two checkpoints' answers."""
    rt = make_runtime(store_dir)
    rt.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    report = rt.consolidate("memit", batch_size=1, hparams=FAST_MEMIT, params=FAST_BOUNDS, progress=False)
    assert report.accepted
    app = create_app(rt, ServerConfig(model_name="recall-llama"))
    errors: list[str] = []
    with running(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        def mover() -> None:
            for target in (None, report.checkpoint, None, report.checkpoint):
                try:
                    state = app.state.recall
                    state.worker.exclusive(rt.rollback, target)
                except Exception as exc:  # pragma: no cover - reported below
                    errors.append(repr(exc))
                time.sleep(0.3)

        thread = threading.Thread(target=mover)
        thread.start()
        answers = [_ask(client, FACT_PROMPT) for _ in range(8)]
        thread.join()
    assert not errors
    assert {s for _, s, _ in answers} <= {"base", report.checkpoint}
    assert all(t.strip().startswith("English") for t, _, _ in answers)


def test_an_unservable_head_keeps_the_old_weights_and_the_memory_copies(make_runtime, store_dir):
    """A head this process cannot load (here: its weights file damaged after the commit) is
    reported, not served; the edits it folded are still answered from their memory copies."""
    reader = make_runtime(store_dir)
    edit = reader.add_edit(prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)
    job = subprocess.run(  # another process consolidates (one LMDB environment per process)
        [sys.executable, "-m", "recall", "consolidate", str(store_dir), "--method", "memit", "--batch-size", "1",
         "--hparams", FAST_MEMIT, "--device", "cpu", *FAST_BOUNDS_ARGS],
        capture_output=True, text=True, env=child_env(), timeout=300,
    )
    assert job.returncode == 0, job.stderr[-2000:]
    report = json.loads(job.stdout)
    assert report["consolidated"] == [edit.id]
    report = SimpleNamespace(**report)
    weights = store_dir / "checkpoints" / report.checkpoint / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    ((text, ids),) = reader.generate_with_edits([FACT_PROMPT], max_new_tokens=3)
    assert reader.served.head is None and "does not match" in (reader.head_error or "")
    assert ids == [edit.id] and text.strip().startswith("English")
    reader.generate([FACT_PROMPT], max_new_tokens=1)  # not retried on every call
    assert reader.served.head is None
