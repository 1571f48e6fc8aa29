"""Typed errors. Every error says what was wrong; none leaves the store half-written."""

from __future__ import annotations


class RecallError(Exception):
    """Base class of every error raised by recall."""


class InvalidEditError(RecallError, ValueError):
    """An edit's fields are missing, of the wrong type, empty or too long."""


class MissingFieldError(InvalidEditError):
    """A required field of an edit or record is absent."""


class EmptyTextError(InvalidEditError):
    """A text field is empty or whitespace only."""


class TextTooLongError(InvalidEditError):
    """A text field is longer than the configured limit."""


class UnknownKindError(InvalidEditError):
    """The edit kind is not one the runtime knows."""


class InvalidRegexError(InvalidEditError):
    """A regex patch does not compile."""


class UnsafeRegexError(InvalidRegexError):
    """A regex patch backtracks catastrophically (it ran past its time bound on a probe)."""


class InvalidQueryError(RecallError, ValueError):
    """A query (prompt or continuation passed to generate/score/explain) is malformed."""


class EditNotFoundError(RecallError, KeyError):
    """No edit with this id exists in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "edit not found"


class EditConflictError(RecallError):
    """An import would overwrite an existing edit id with different content."""


class ImportFormatError(RecallError, ValueError):
    """A JSONL import line is not valid UTF-8, not JSON, or not an edit."""


class StoreError(RecallError):
    """The store directory cannot be used."""


class StoreCorruptError(StoreError):
    """The store's LMDB files are unreadable or inconsistent."""


class SchemaVersionError(StoreError):
    """The store was written by a newer schema than this version of recall understands."""


class StoreLockedError(StoreError):
    """The store is closed or read-only."""


class ConfigError(RecallError):
    """A configuration file (e.g. gate parameters) is missing or malformed."""


class BenchSettingsError(ConfigError, ValueError):
    """A benchmark was asked for settings it cannot run (an unknown form, a kind it does not stream)."""


class RecallIOError(RecallError, OSError):
    """A file the caller named cannot be read or written."""


class ModelLoadError(RecallError):
    """A model or encoder could not be loaded from local files."""


class UnsupportedModelError(ModelLoadError):
    """The model loads and answers queries, but a fact weight editing needs (its decoder layer
    list, MLP output projections or unembedding) could not be located in its module tree."""


class CheckpointError(StoreError):
    """A weight checkpoint is unknown, or does not belong to the loaded model."""


class ConsolidationError(RecallError):
    """A consolidation job could not run (unknown method, bad parameters, no model ownership)."""


class UnknownEditorError(ConsolidationError, ValueError):
    """No weight editor is registered under this name (the message lists the registered ones)."""


class EditorNotTrainedError(ConsolidationError):
    """A trained editor (MEND's network) is needed and none exists for this base model."""


__all__ = [
    "RecallError",
    "InvalidEditError",
    "MissingFieldError",
    "EmptyTextError",
    "TextTooLongError",
    "UnknownKindError",
    "InvalidRegexError",
    "UnsafeRegexError",
    "InvalidQueryError",
    "EditNotFoundError",
    "EditConflictError",
    "ImportFormatError",
    "StoreError",
    "StoreCorruptError",
    "SchemaVersionError",
    "StoreLockedError",
    "ConfigError",
    "RecallIOError",
    "ModelLoadError",
    "UnsupportedModelError",
    "CheckpointError",
    "ConsolidationError",
    "UnknownEditorError",
    "EditorNotTrainedError",
]
