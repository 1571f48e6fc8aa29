"""``recall.index``: the edit memory. LMDB record store (source of truth), FAISS vector index
(derived, rebuilt from LMDB when stale), and the sentence encoder of retrieval keys.

The folder is ``index/`` at the repository's top level; ``pyproject.toml`` maps it to
``recall.index`` (setuptools ``package-dir``), so nothing generic named ``index`` lands in
site-packages. It imports only the base layer, ``recall.core``."""

from recall.index.encoder import TextEncoder
from recall.index.store import EditStore
from recall.index.vectors import VectorIndex

__all__ = ["EditStore", "TextEncoder", "VectorIndex"]
