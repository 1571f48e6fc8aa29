"""Package data (``recall/data/``), read through :mod:`importlib.resources`.

Never build these paths from ``__file__``: in an installed wheel the repository layout is
gone (``index/`` and ``methods/`` are mapped into the ``recall`` package), and a path that
worked in the checkout points nowhere. Every module that ships data reads it from here.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

PACKAGE = "recall"
COUNTERFACT_SAMPLE = "counterfact_sample.json"  # 200 CounterFact records (data/ATTRIBUTION.md)
GENERIC_CORPUS = "wikibio_text.jsonl"  # generic text for covariance statistics
GATE_PARAMS = "gate.json"  # the learned gate's shipped weights
RECIPE_CHECKPOINT = "recipe"  # the continuous-prompt model's shipped checkpoint (a folder)
RELATION_SCORER = "relation_scorer.pt"  # the relation scorer's low-rank updates and head


def data_file(*parts: str) -> Traversable:
    """A file or folder under ``recall/data/``, wherever the package is installed."""
    return resources.files(PACKAGE).joinpath("data", *parts)


def data_path(*parts: str) -> AbstractContextManager[Path]:
    """A real filesystem path for ``data_file(*parts)`` (for libraries that need one, such as
    safetensors), valid inside the ``with`` block. For a wheel or checkout on disk this is the
    file itself; for a zipped install it is a temporary copy."""
    return resources.as_file(data_file(*parts))


def read_json(*parts: str) -> Any:
    return json.loads(data_file(*parts).read_text(encoding="utf-8"))


def counterfact_sample() -> list[dict[str, Any]]:
    """The 200 CounterFact records shipped with recall (MEND schema; see data/ATTRIBUTION.md)."""
    return read_json(COUNTERFACT_SAMPLE)
