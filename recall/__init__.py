"""recall: a retrieval-first runtime for lifelong knowledge editing of language models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from recall import errors  # noqa: E402
from recall.core.edits import Edit  # noqa: E402
from recall.runtime import Runtime  # noqa: E402

__all__ = ["Edit", "Runtime", "errors"]
__version__ = "0.1.0"
