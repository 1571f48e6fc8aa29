"""The edit memory: LMDB record store (source of truth), FAISS vector index (derived), text encoder."""

from recall.index.encoder import TextEncoder, default_encoder_path
from recall.index.store import EditStore
from recall.index.vectors import VectorIndex

__all__ = ["EditStore", "TextEncoder", "VectorIndex", "default_encoder_path"]
