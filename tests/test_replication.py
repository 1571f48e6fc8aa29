"""Read replicas that keep their own store (:mod:`recall.replication`), without Ray: a
follower pulls the writer's change log into a second store in another directory, and the
runtime over that copy serves what the writer acknowledged. (Across Ray nodes:
``test_server_ray_copies.py``.)"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FACT_PROMPT, FACT_SUBJECT

from recall import replication
from recall.bench.scale import synthetic_facts
from recall.checkpoints import CheckpointDir
from recall.core.errors import CheckpointError
from recall.index.store import StaleStateError


class Direct:
    """The writer's side, called in-process (the Ray deployment calls the same functions)."""

    def __init__(self, rt) -> None:
        self.rt = rt

    def changes(self, after: int, limit: int):
        return replication.changes(self.rt.memory.store, after, limit)

    def checkpoint_files(self, ckpt_id: str):
        return CheckpointDir(self.rt.memory.store.path).files(ckpt_id)


def _fired(rt, prompt: str) -> list[str]:
    return list(rt.explain(prompt)["fired"])


def test_a_copy_follows_adds_retirements_codebooks_and_the_head(make_runtime, tmp_path, loaded_model):
    writer = make_runtime(tmp_path / "writer" / "store")
    facts = synthetic_facts(5, seed=7)
    stored = [writer.add_edit(**f) for f in facts]
    book = writer.add_edit("codebook", prompt=FACT_PROMPT, target="English", subject=FACT_SUBJECT)

    replica = make_runtime(tmp_path / "replica" / "store")
    follower = replication.Follower(replica.memory.store, Direct(writer), batch=2)
    assert follower.step() == 6  # the snapshot, in pieces of two edits
    assert follower.status == {
        "replicated_generation": writer.memory.store.generation,
        "source_generation": writer.memory.store.generation,
        "behind": 0,
        "last_error": None,
    }
    assert [e.id for e in replica.edits()] == [e.id for e in writer.edits()]
    for e in stored:
        np.testing.assert_array_equal(replica.memory.store.vectors(e.num), writer.memory.store.vectors(e.num))
    assert _fired(replica, facts[2]["prompt"]) == [stored[2].id]
    assert replica.explain(FACT_PROMPT)["codebook"]["hit"] is True
    assert follower.step() == 0  # caught up: nothing to apply

    # a retirement, and a fact that supersedes another (same subject and relation)
    writer.remove_edit(stored[0].id)
    newer = writer.add_edit(**{**facts[1], "target": "Quechua"})
    writer.remove_edit(book.id)
    assert follower.step() == 4  # stored[0], stored[1] (superseded), newer, the codebook edit
    assert _fired(replica, facts[0]["prompt"]) == []
    assert _fired(replica, facts[1]["prompt"]) == [newer.id]
    assert replica.memory.store.get(stored[1].id).status == "retired"
    assert replica.memory.store.superseded_by(newer.id) == [stored[1].id]
    assert not (replica.explain(FACT_PROMPT)["codebook"] or {}).get("hit")
    assert {e.id for e in replica.edits()} == {e.id for e in writer.edits()}

    # a new checkpoint head: its files are fetched before the head is applied
    name = "model.layers.0.mlp.down_proj.weight"
    weight = dict(loaded_model[0].named_parameters())[name].detach().clone() * 1.01
    CheckpointDir(writer.memory.store.path).write("ckpt-a", {name: weight}, {"parent": None})
    writer.memory.store.commit_statuses({}, meta={"checkpoints": ["ckpt-a"], "checkpoint_head": "ckpt-a"})
    follower.step()
    assert replica.memory.store.get_meta("checkpoint_head") == "ckpt-a"
    copied = CheckpointDir(replica.memory.store.path).path("ckpt-a")
    assert sorted(p.name for p in copied.iterdir()) == sorted(
        p.name for p in CheckpointDir(writer.memory.store.path).path("ckpt-a").iterdir()
    )
    assert replica.follow_head() == "ckpt-a"
    assert dict(replica.model.named_parameters())[name].equal(weight)


def test_a_batch_for_another_starting_point_is_refused(make_runtime, tmp_path):
    writer = make_runtime(tmp_path / "w")
    writer.add_edit(**synthetic_facts(1, seed=8)[0])
    replica = make_runtime(tmp_path / "r")
    batch = replication.changes(writer.memory.store, 0)
    replica.memory.store.apply_changes(batch)
    before = replica.memory.store.generation
    with pytest.raises(StaleStateError, match="this copy is at"):
        replica.memory.store.apply_changes(batch)  # applied twice: the copy is past it
    assert replica.memory.store.generation == before
    with pytest.raises(ValueError, match="limit"):
        writer.memory.store.export_changes(0, 0)

    # checkpoint files from elsewhere: a name that leaves the folder is refused, nothing stays
    copy = CheckpointDir(replica.memory.store.path)
    with pytest.raises(CheckpointError, match="refusing file name"):
        copy.install("ckpt-b", {"manifest.json": b"{}", "../escape": b"x"})
    assert not copy.root.exists() or list(copy.root.iterdir()) == []
    with pytest.raises(CheckpointError, match="no checkpoint"):
        CheckpointDir(writer.memory.store.path).files("ckpt-none")
