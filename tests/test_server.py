"""The HTTP server over a real Runtime (embedded model, real LMDB/FAISS) on loopback: the
OpenAI-compatible endpoints, the edit admin API with its token, batching of concurrent
requests with per-request edits, limits, and shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import FACT_PARAPHRASE, FACT_PROMPT, FACT_SUBJECT, UNRELATED, child_env, open_cached_runtime

from recall.memory import INDEX_FILE
from recall.runtime import Runtime
from recall.server import ServerConfig, create_app
from recall.server.background import running

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "smollm2-test"
FACT = {"prompt": FACT_PROMPT, "target": "English", "subject": FACT_SUBJECT}
# a second, unrelated edit, so that a request could visibly receive the wrong one
TOWER = {"prompt": "The Eiffel Tower is located in the city of", "target": "Rome", "subject": "Eiffel Tower"}


@pytest.fixture(scope="module")
def runtime(loaded_model, encoder, tmp_path_factory) -> Runtime:
    rt = open_cached_runtime(tmp_path_factory.mktemp("server") / "store", loaded_model, encoder)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def base_url(runtime) -> str:
    app = create_app(runtime, ServerConfig(token=TOKEN, model_name=MODEL, max_batch=32, batch_window_ms=10))
    with running(app) as url:
        yield url


@pytest.fixture
def client(base_url) -> httpx.Client:
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c


def complete(client: httpx.Client, prompt: str, max_tokens: int = 4, **extra) -> dict:
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def add(client: httpx.Client, fields: dict) -> dict:
    r = client.post("/v1/edits", json=fields, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()


def sse_events(text: str) -> list:
    """The data payloads of a server-sent event stream, [DONE] included as a string."""
    out = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_edit_via_api_changes_the_next_answer(client):
    before = complete(client, FACT_PROMPT)
    assert before["recall_edits"] == []
    assert not before["choices"][0]["text"].strip().startswith("English")

    assert client.post("/v1/edits", json=FACT).status_code == 401
    r = client.post("/v1/edits", json=FACT, headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    edit = add(client, FACT)
    assert edit["id"] and edit["status"] == "active" and edit["provenance"] == "api"

    # completions, not streaming
    body = complete(client, FACT_PROMPT)
    assert body["choices"][0]["text"].startswith(" English")
    assert body["recall_edits"] == [edit["id"]] and body["choices"][0]["recall_edits"] == [edit["id"]]
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] == 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["choices"][0]["finish_reason"] == "length"

    # completions, streaming: the pieces join to the same text
    r = client.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": FACT_PROMPT, "max_tokens": 4, "stream": True,
              "stream_options": {"include_usage": True}},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == body["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["usage"] == usage and events[-2]["recall_edits"] == [edit["id"]]

    # chat, not streaming and streaming (the tokenizer's chat template)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": FACT_PARAPHRASE}], "max_tokens": 4}
    r = client.post("/v1/chat/completions", json=chat)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["role"] == "assistant"
    assert "English" in reply["choices"][0]["message"]["content"]
    assert reply["recall_edits"] == [edit["id"]]
    r = client.post("/v1/chat/completions", json={**chat, "stream": True})
    events = sse_events(r.text)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant" and events[-1] == "[DONE]"
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert streamed == reply["choices"][0]["message"]["content"]
    assert all(e["recall_edits"] == [edit["id"]] for e in events[:-1])
    # scope is the user's turn: a system prompt naming the subject does not fire the edit
    aside = {"model": MODEL, "max_tokens": 4, "messages": [
        {"role": "system", "content": f"The user admires {FACT_SUBJECT}."},
        {"role": "user", "content": UNRELATED}]}
    r = client.post("/v1/chat/completions", json=aside)
    assert r.status_code == 200 and r.json()["recall_edits"] == [], r.text

    # retired through the API: the next request is the unedited model again
    r = client.delete(f"/v1/edits/{edit['id']}")
    assert r.status_code == 401
    r = client.delete(f"/v1/edits/{edit['id']}", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "retired" and r.json()["deleted"] is True
    after = complete(client, FACT_PROMPT)
    assert after["recall_edits"] == [] and after["choices"][0]["text"] == before["choices"][0]["text"]


def test_64_concurrent_requests_get_their_own_edits(client, runtime):
    fact, tower = add(client, FACT), add(client, TOWER)
    unrelated = [UNRELATED, "The capital of Japan is", "Water boils at a temperature of"]
    expected_bare = {p: complete(client, p)["choices"][0]["text"] for p in unrelated}
    stats_before = client.get("/health").json()
    jobs = []
    for i in range(64):
        kind = ("fact", "tower", "none")[i % 3]
        prompt = {"fact": FACT_PROMPT, "tower": TOWER["prompt"], "none": unrelated[i % len(unrelated)]}[kind]
        jobs.append((kind, prompt))

    with ThreadPoolExecutor(64) as pool:
        bodies = list(pool.map(lambda job: complete(client, job[1]), jobs))

    for (kind, prompt), body in zip(jobs, bodies):
        text, fired = body["choices"][0]["text"], body["recall_edits"]
        if kind == "fact":
            assert text.startswith(" English") and fired == [fact["id"]], (prompt, body)
        elif kind == "tower":
            assert text.startswith(" Rome") and fired == [tower["id"]], (prompt, body)
        else:
            assert fired == [] and text == expected_bare[prompt], (prompt, body)
    stats = client.get("/health").json()
    assert stats["rows"] - stats_before["rows"] == 64
    assert stats["batches"] - stats_before["batches"] < 64  # requests were batched together
    assert stats["max_rows"] > 1
    for e in (fact, tower):
        client.delete(f"/v1/edits/{e['id']}", headers=AUTH)


def test_openai_client_unchanged(base_url):
    openai = pytest.importorskip("openai")
    with httpx.Client(base_url=base_url) as c:
        edit = add(c, FACT)
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=TOKEN, max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]

    comp = client.completions.create(model=MODEL, prompt=FACT_PROMPT, max_tokens=4)
    assert comp.choices[0].text.startswith(" English")
    assert comp.usage.completion_tokens == 4
    assert comp.model_extra["recall_edits"] == [edit["id"]]

    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FACT_PROMPT}], max_tokens=4
    )
    assert "English" in chat.choices[0].message.content
    assert chat.model_extra["recall_edits"] == [edit["id"]]

    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": FACT_PROMPT}], max_tokens=4, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == chat.choices[0].message.content
    stream = client.completions.create(model=MODEL, prompt=FACT_PROMPT, max_tokens=4, stream=True)
    assert "".join(c.choices[0].text for c in stream) == comp.choices[0].text

    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="hi", max_tokens=2, n=2)
    with httpx.Client(base_url=base_url) as c:
        c.delete(f"/v1/edits/{edit['id']}", headers=AUTH)


def test_admin_api_list_search_get_import(client):
    added = add(client, {**TOWER, "id": "tower-1", "provenance": "tests"})
    assert added["id"] == "tower-1" and added["provenance"] == "tests"
    assert client.get("/v1/edits/tower-1").json()["payload"]["target"] == "Rome"
    r = client.get("/v1/edits/no-such-id")
    assert r.status_code == 404 and r.json()["error"]["code"] == "edit_not_found"
    assert client.post("/v1/edits", json={**TOWER, "id": "tower-1"}, headers=AUTH).status_code == 409

    found = client.get("/v1/edits", params={"q": "eiffel"}).json()
    assert [e["id"] for e in found["data"]] == ["tower-1"] and found["total"] == 1
    assert client.get("/v1/edits", params={"q": "no such text anywhere"}).json()["total"] == 0

    # bulk import, JSON form: validated as a whole; one bad record writes nothing
    records = [
        {"prompt": "The official language of Wakanda is", "target": "Klingon", "subject": "Wakanda"},
        {"kind": "patch", "text": "If someone asks about the office wifi, then the password is in the handbook"},
    ]
    total_before = client.get("/v1/edits", params={"status": "all"}).json()["total"]
    r = client.post("/v1/edits/import", json={"edits": [*records, {"kind": "fact", "prompt": "x"}]}, headers=AUTH)
    assert r.status_code == 400 and "line 3" in r.json()["error"]["message"]
    assert client.get("/v1/edits", params={"status": "all"}).json()["total"] == total_before
    assert client.post("/v1/edits/import", json={"edits": records}).status_code == 401
    r = client.post("/v1/edits/import", json={"edits": records}, headers=AUTH)
    assert r.status_code == 201 and r.json()["imported"] == 2
    wakanda = client.get("/v1/edits", params={"q": "wakanda"}).json()["data"][0]
    assert complete(client, "The official language of Wakanda is")["recall_edits"] == [wakanda["id"]]

    # JSONL form (what `recall edit export` writes): re-importing existing records skips them
    exported = [{k: v for k, v in e.items() if k not in ("object",)} for e in [wakanda, added]]
    r = client.post(
        "/v1/edits/import",
        content="\n".join(json.dumps(e) for e in exported),
        headers={**AUTH, "Content-Type": "application/x-ndjson"},
    )
    assert r.status_code == 200 and r.json() == {"object": "import", "imported": 0, "skipped": 2}

    explained = client.post("/v1/explain", json={"prompt": "The official language of Wakanda is"}).json()
    assert explained["fired"] == [wakanda["id"]]

    for e in client.get("/v1/edits").json()["data"]:
        assert client.delete(f"/v1/edits/{e['id']}", headers=AUTH).status_code == 200
    retired = client.get("/v1/edits", params={"status": "retired"}).json()["data"]
    assert "tower-1" in {e["id"] for e in retired}
    assert client.get("/v1/edits").json()["total"] == 0


def test_bad_requests_get_openai_shaped_errors(client):
    def error(r: httpx.Response, status: int) -> dict:
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        return err

    post = lambda path, body, **kw: client.post(path, json=body, **kw)  # noqa: E731
    assert error(post("/v1/completions", {"model": MODEL, "prompt": "  "}), 400)["param"] == "prompt"
    assert error(post("/v1/completions", {"model": MODEL}), 400)["param"] == "prompt"
    assert error(post("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 100000}), 400)
    assert error(post("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 0}), 400)
    assert error(post("/v1/completions", {"model": MODEL, "prompt": "hi", "echo": True}), 400)["param"] == "echo"
    assert error(post("/v1/completions", {"model": MODEL, "prompt": "x" * 9000}), 400)["code"] == "prompt_too_long"
    assert error(post("/v1/completions", {"model": MODEL, "prompt": ["hi"] * 17}), 400)
    assert error(post("/v1/completions", {"model": "gpt-4", "prompt": "hi"}), 404)["code"] == "model_not_found"
    assert error(post("/v1/chat/completions", {"model": MODEL, "messages": []}), 400)
    bad_role = {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}
    assert error(post("/v1/chat/completions", bad_role), 400)
    no_user_turn = {"model": MODEL, "messages": [{"role": "system", "content": "Be brief."}]}
    assert error(post("/v1/chat/completions", no_user_turn), 400)["param"] == "messages"
    too_long = {"model": MODEL, "messages": [{"role": "user", "content": "語" * 7000}], "max_tokens": 4}
    assert error(post("/v1/chat/completions", too_long), 400)
    r = client.post("/v1/completions", content=b'{"model": "' + b"x" * (2 << 20) + b'"}')
    assert error(r, 413)
    r = client.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert error(r, 400)
    err = error(post("/v1/edits", {"kind": "fact", "prompt": "The CEO of Acme is"}, headers=AUTH), 400)
    assert err["code"] == "invalid_edit" and "target" in err["message"]
    assert error(post("/v1/edits", {"kind": "spell", "text": "x"}, headers=AUTH), 400)["code"] == "invalid_edit"
    err = error(post("/v1/edits", {"kind": "regex", "pattern": "(a+)+$", "replacement": "b"}, headers=AUTH), 400)
    assert "backtrack" in err["message"] or "time" in err["message"]
    assert error(client.delete("/v1/edits/no-such-id", headers=AUTH), 404)["type"] == "not_found_error"

    # several prompts in one request: one choice each, in order, each with its own edits
    body = complete(client, ["The capital of Japan is", UNRELATED], max_tokens=2)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    # stop sequences cut the text and end the completion with "stop"
    text = complete(client, UNRELATED, max_tokens=8)["choices"][0]["text"]
    word = text.split()[0]
    cut = complete(client, UNRELATED, max_tokens=8, stop=[word])["choices"][0]
    assert cut["text"] == text[: text.find(word)] and cut["finish_reason"] == "stop"


def test_reads_can_require_the_token_and_writes_need_one(runtime):
    locked = create_app(runtime, ServerConfig(token=TOKEN, auth_reads=True, model_name=MODEL))
    with running(locked) as url, httpx.Client(base_url=url, timeout=60) as c:
        assert c.get("/v1/edits").status_code == 401
        assert c.get("/v1/models").status_code == 401
        assert c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1}).status_code == 401
        assert c.get("/v1/edits", headers=AUTH).status_code == 200
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1}, headers=AUTH)
        assert r.status_code == 200
    no_token = create_app(runtime, ServerConfig(token=None, model_name=MODEL))
    with running(no_token) as url, httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/edits", json=FACT, headers=AUTH)
        assert r.status_code == 403 and r.json()["error"]["code"] == "writes_disabled"
        assert c.get("/v1/edits").status_code == 200


def test_full_queue_timeout_and_shutdown(runtime):
    tight = create_app(runtime, ServerConfig(token=TOKEN, model_name=MODEL, max_queue=1, max_batch=1,
                                             batch_window_ms=0))
    with running(tight) as url, httpx.Client(base_url=url, timeout=120) as c:
        body = {"model": MODEL, "prompt": UNRELATED, "max_tokens": 12}
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: c.post("/v1/completions", json=body), range(8)))
        statuses = sorted(r.status_code for r in codes)
        assert set(statuses) == {200, 429} and statuses.count(200) >= 2, statuses
        limited = next(r for r in codes if r.status_code == 429)
        assert limited.json()["error"]["type"] == "rate_limit_error" and limited.headers["retry-after"]
        # once the worker is stopping, new work is refused with 503 (edits still readable)
        tight.state.recall.worker.stop()
        r = c.post("/v1/completions", json=body)
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        assert c.get("/v1/edits").status_code == 200

    slow = create_app(runtime, ServerConfig(model_name=MODEL, request_timeout_s=0.05))
    with running(slow) as url, httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": UNRELATED, "max_tokens": 64})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"


def test_shutdown_keeps_acknowledged_edits(loaded_model, encoder, tmp_path):
    """An app that owns its runtime closes it at shutdown; every acknowledged edit is in the
    store when it is opened again."""
    rt = open_cached_runtime(tmp_path / "store", loaded_model, encoder)
    app = create_app(rt, ServerConfig(token=TOKEN, model_name=MODEL), owns_runtime=True)
    ids = []
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        with ThreadPoolExecutor(4) as pool:
            fields = [{"prompt": f"The favourite colour of Person {i} is", "target": "teal", "subject": f"Person {i}"}
                      for i in range(12)]
            ids = [r.json()["id"] for r in pool.map(lambda f: c.post("/v1/edits", json=f, headers=AUTH), fields)]
    assert rt.memory.store.env is None  # closed by the app's shutdown
    reopened = open_cached_runtime(tmp_path / "store", loaded_model, encoder)
    try:
        assert {e.id for e in reopened.edits()} == set(ids)
        assert reopened.explain("The favourite colour of Person 3 is")["fired"]
    finally:
        reopened.close()


def test_recall_serve_command_sigterm(tmp_path):
    """`recall serve` in a real process: the token from RECALL_API_TOKEN, a consolidation
    schedule whose job settings /health reports, an edit acknowledged over HTTP, SIGTERM, a clean
    exit, and the edit in the store afterwards."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    store = tmp_path / "store"
    env = {**child_env(), "RECALL_API_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recall.cli", "serve", str(store), "--port", str(port), "--device", "cpu",
         "--model-name", MODEL, "--consolidate-every", "1d", "--consolidate-batch-size", "7",
         "--consolidate-min-probe-agreement", "0.8", "--consolidate-probe-texts", "8"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        jobs = httpx.get(f"{url}/health", headers=AUTH, timeout=10).json()["consolidation"]
        assert jobs["every_s"] == 86400 and jobs["batch_size"] == 7 and jobs["runs"] == 0
        bounds = {"min_probe_agreement": 0.8, "max_ppl_ratio": 1.1, "probe_tokens": 128, "probe_texts": 8}
        assert jobs["bounds"] == bounds
        assert httpx.post(f"{url}/v1/edits", json=FACT).status_code == 401
        edit = httpx.post(f"{url}/v1/edits", json=FACT, headers=AUTH, timeout=60).json()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        # uvicorn re-raises SIGTERM after its graceful shutdown: the conventional exit status
        assert proc.returncode in (0, -signal.SIGTERM), out
        assert "Application shutdown complete" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    code = (
        "import sys; from recall.index import EditStore; "
        "s = EditStore(sys.argv[1], readonly=True); print([e.id for e in s.iter_edits('active')])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(store)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr([edit["id"]])
    assert os.path.exists(store / INDEX_FILE)  # the runtime was closed cleanly
