"""Replicas with their own store copies (``build_app(local_copies=True)``) on a two-node Ray
cluster: a head node and a second node process (``ray.cluster_utils.Cluster``: separate
raylets and object stores on this machine, joined over the host's address as on a network).
The writer deployment is pinned to the head and keeps the store in one directory; the serving
replicas are pinned to the second node, each keeping a copy in another directory and following
the writer's change log over Ray. An edit acknowledged by the writer is served by a replica on
the other node within a measured lag; a retirement too; a replica added later bootstraps from
the snapshot plus the log; a consolidation run against the writer's store moves the replicas
to the new checkpoint, whose files they fetch.

Nodes cannot be joined on 127.0.0.1 only here: the head's GCS then still advertises the host
address, which nothing listens on (the second node waits forever), so the cluster uses the
host's address, which is reachable from this machine.

`make test` installs the `ray` extra, so this runs there; elsewhere it is skipped."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import FACT_PROMPT, FACT_SUBJECT, FAST_BOUNDS_ARGS, child_env
from test_server_ray import AUTH, FAST_MEMIT, MODEL, TOKEN, WORKER_ENV, complete, free_port

from recall.bench.scale import synthetic_facts
from recall.server import ServerConfig

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

FACT = {"prompt": FACT_PROMPT, "target": "English", "subject": FACT_SUBJECT}
MAX_LAG_S = 10.0  # the bound the test holds replication to (polling every 0.1 s)


def start_two_nodes():
    """A head node that alone has the "writer_node" resource and a second node that alone has
    "replica_node"; the driver connects to the head."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"writer_node": 1}, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=2, resources={"replica_node": 8})
    ray.init(address=cluster.address, runtime_env={"env_vars": WORKER_ENV}, log_to_driver=False,
             configure_logging=False)
    cluster.wait_for_nodes()
    return cluster


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    from recall.server.ray_serve import build_app

    writer_dir = tmp_path_factory.mktemp("writer")
    copies_dir = tmp_path_factory.mktemp("copies")
    port = free_port()
    cluster = start_two_nodes()

    def deploy(num_replicas: int) -> None:
        app = build_app(
            writer_dir / "store",
            num_replicas=num_replicas,
            config=ServerConfig(token=TOKEN, model_name=MODEL),
            local_copies=True,
            copy_root=copies_dir,
            writer_options={"resources": {"writer_node": 0.01}},
            replica_options={"resources": {"replica_node": 1}},
        )
        serve.run(app, name="recall", route_prefix="/")

    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        deploy(1)
        yield {"url": f"http://127.0.0.1:{port}", "store": writer_dir / "store", "copies": copies_dir, "deploy": deploy}
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def test_the_cluster_has_two_nodes_and_each_deployment_its_own(copies):
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2 and len({n["NodeID"] for n in nodes}) == 2
    with_writer = [n for n in nodes if n["Resources"].get("writer_node")]
    with_replicas = [n for n in nodes if n["Resources"].get("replica_node")]
    assert len(with_writer) == len(with_replicas) == 1 and with_writer != with_replicas


def _fired(url: str, prompt: str) -> list[str]:
    r = httpx.post(f"{url}/v1/explain", json={"prompt": prompt}, timeout=60)
    assert r.status_code == 200, r.text
    return list(r.json()["fired"])


def _lag(url: str, prompt: str, expect) -> float:
    """Seconds from now until the replica's explain of ``prompt`` satisfies ``expect``."""
    start = time.monotonic()
    while not expect(_fired(url, prompt)):
        assert time.monotonic() - start < 60, f"the replica did not catch up on {prompt!r} in 60 s"
        time.sleep(0.02)
    return time.monotonic() - start


def test_an_edit_written_by_the_writer_is_served_from_a_copy(copies):
    url = copies["url"]
    own = list(Path(copies["copies"]).glob("recall-replica-*/store"))
    assert len(own) == 1 and (own[0] / "data.mdb").is_file()  # the replica's own store

    lags = []
    for fact in synthetic_facts(5, seed=11):
        r = httpx.post(f"{url}/v1/edits", json=fact, headers=AUTH, timeout=60)
        assert r.status_code == 201, r.text  # acknowledged: on the writer's disk
        edit_id = r.json()["id"]
        lags.append(_lag(url, fact["prompt"], lambda fired, e=edit_id: fired == [e]))
    r = httpx.post(f"{url}/v1/edits", json=FACT, headers=AUTH, timeout=60)
    edit = r.json()
    lags.append(_lag(url, FACT_PROMPT, lambda fired: fired == [edit["id"]]))
    body = complete(url, FACT_PROMPT)
    assert body["choices"][0]["text"].startswith(" English") and body["recall_edits"] == [edit["id"]]

    r = httpx.delete(f"{url}/v1/edits/{edit['id']}", headers=AUTH, timeout=60)
    assert r.status_code == 200
    lags.append(_lag(url, FACT_PROMPT, lambda fired: fired == []))
    print(f"replication lag over {len(lags)} writes: median {statistics.median(lags):.3f} s, max {max(lags):.3f} s")
    assert max(lags) < MAX_LAG_S, lags

    # a replica started now bootstraps from the snapshot plus the log
    httpx.post(f"{url}/v1/edits", json=FACT, headers=AUTH, timeout=60).raise_for_status()
    copies["deploy"](2)
    assert len(list(Path(copies["copies"]).glob("recall-replica-*/store"))) == 2
    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda _: httpx.get(f"{url}/health", timeout=60).json(), range(24)))
    assert len({b["pid"] for b in bodies}) == 2
    with ThreadPoolExecutor(3) as pool:  # within each replica's explain admission (4 in flight)
        fired = list(pool.map(lambda p: _fired(url, p), [FACT_PROMPT] * 12))
    assert all(len(f) == 1 for f in fired)  # both replicas, the old and the new


def test_a_checkpoint_made_on_the_writer_store_is_fetched_and_served(copies):
    url, store = copies["url"], copies["store"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "recall",
            "consolidate",
            str(store),
            "--method",
            "memit",
            "--batch-size",
            "1",
            "--limit",
            "1",
            "--hparams",
            FAST_MEMIT,
            *FAST_BOUNDS_ARGS,
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["checkpoint"]
    start = time.monotonic()
    while complete(url, "The capital of France is")["recall_checkpoint"] != report["checkpoint"]:
        assert time.monotonic() - start < 60, "the other node did not switch to the new checkpoint"
        time.sleep(0.1)
    with ThreadPoolExecutor(4) as pool:  # every replica on the other node
        bodies = list(pool.map(lambda _: complete(url, "The capital of France is"), range(8)))
    assert {b["recall_checkpoint"] for b in bodies} == {report["checkpoint"]}
    fetched = list(Path(copies["copies"]).glob(f"recall-replica-*/store/checkpoints/{report['checkpoint']}"))
    assert len(fetched) == 2  # each replica's copy holds the checkpoint's files
