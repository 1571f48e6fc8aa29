"""Scale-out on Ray Serve, on one machine: a local Ray cluster on loopback, two serving
replicas over one store opened read-only, one writer deployment. An edit written through
the API (to the writer) applies to the next request on every replica; a retirement too.
A consolidation job and a rollback run by another process move the head: every replica
switches weights between requests and says which checkpoint answered.

`make test` installs the `ray` extra, so this runs there; elsewhere it is skipped when Ray
is not installed."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import FACT_PROMPT, FACT_SUBJECT, FAST_BOUNDS_ARGS, UNRELATED, child_env

from recall.server import ServerConfig

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

TOKEN = "ray-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "smollm2-ray"
FACT = {"prompt": FACT_PROMPT, "target": "English", "subject": FACT_SUBJECT}
FAST_MEMIT = str(Path(__file__).parent / "data" / "memit_fast.json")
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_ray() -> None:
    """A local Ray cluster on loopback, quiet, with the workers' environment."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": WORKER_ENV},
        log_to_driver=False,
        configure_logging=False,
    )


@pytest.fixture(scope="module")
def ray_url(tmp_path_factory):
    from recall.server.ray_serve import build_app

    store = tmp_path_factory.mktemp("ray") / "store"
    port = free_port()
    start_local_ray()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ServerConfig(token=TOKEN, model_name=MODEL)
        serve.run(build_app(store, num_replicas=2, config=config), name="recall", route_prefix="/")
        yield f"http://127.0.0.1:{port}", store
    finally:
        serve.shutdown()
        ray.shutdown()


def complete(url: str, prompt: str) -> dict:
    r = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 4}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_replicas_follow_the_single_writer(ray_url):
    url, store = ray_url
    with ThreadPoolExecutor(16) as pool:
        pids = {r.json()["pid"] for r in pool.map(lambda _: httpx.get(f"{url}/health", timeout=60), range(24))}
    assert len(pids) == 2, pids  # both replicas answer

    assert httpx.post(f"{url}/v1/edits", json=FACT, timeout=60).status_code == 401
    r = httpx.post(f"{url}/v1/edits", json=FACT, headers=AUTH, timeout=60)
    assert r.status_code == 201, r.text
    edit = r.json()
    dup = httpx.post(f"{url}/v1/edits", json={**FACT, "id": edit["id"]}, headers=AUTH, timeout=60)
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "edit_conflict"  # typed error crossed over

    # requests spread over both replicas: every one of them sees the writer's edit
    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda p: complete(url, p), [FACT_PROMPT] * 12 + [UNRELATED] * 4))
    for body in bodies[:12]:
        assert body["choices"][0]["text"].startswith(" English") and body["recall_edits"] == [edit["id"]]
    assert all(b["recall_edits"] == [] for b in bodies[12:])
    assert httpx.get(f"{url}/v1/edits/{edit['id']}", timeout=60).json()["status"] == "active"

    r = httpx.delete(f"{url}/v1/edits/{edit['id']}", headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["status"] == "retired"
    with ThreadPoolExecutor(8) as pool:
        after = list(pool.map(lambda p: complete(url, p), [FACT_PROMPT] * 8))
    assert all(b["recall_edits"] == [] for b in after)


def test_replicas_switch_to_a_new_head_between_requests(ray_url):
    url, store = ray_url
    r = httpx.post(f"{url}/v1/edits", json=FACT, headers=AUTH, timeout=60)
    assert r.status_code == 201, r.text
    edit = r.json()
    before = [complete(url, UNRELATED) for _ in range(4)]
    assert {b["recall_checkpoint"] for b in before} == {"base"}

    def recall_cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "recall", *args], capture_output=True, text=True, env=child_env(), timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    report = json.loads(
        recall_cli(
            "consolidate", str(store), "--method", "memit", "--batch-size", "1", "--hparams", FAST_MEMIT,
            *FAST_BOUNDS_ARGS,
        )
    )
    assert edit["id"] in report["consolidated"] and report["checkpoint"]
    with ThreadPoolExecutor(8) as pool:  # spread over both replicas
        after = list(pool.map(lambda p: complete(url, p), [FACT_PROMPT] * 8 + [UNRELATED] * 4))
    assert {b["recall_checkpoint"] for b in after} == {report["checkpoint"]}
    assert {b["system_fingerprint"] for b in after} == {report["checkpoint"]}
    for body in after[:8]:  # the consolidated edit keeps its memory copy
        assert body["choices"][0]["text"].startswith(" English") and body["recall_edits"] == [edit["id"]]

    recall_cli("rollback", str(store), "base")
    with ThreadPoolExecutor(8) as pool:
        rolled = list(pool.map(lambda p: complete(url, p), [FACT_PROMPT] * 8))
    assert {b["recall_checkpoint"] for b in rolled} == {"base"}
    assert all(b["recall_edits"] == [edit["id"]] for b in rolled)  # active again, from memory
