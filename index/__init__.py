"""The edit memory: LMDB record store (source of truth), FAISS vector index (derived), text encoder."""

from .encoder import TextEncoder, default_encoder_path
from .store import EditStore
from .vectors import VectorIndex

__all__ = ["EditStore", "TextEncoder", "VectorIndex", "default_encoder_path"]
