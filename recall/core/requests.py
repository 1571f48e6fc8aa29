"""The one request type of the weight editors and the datasets.

An :class:`EditRequest` is one fact to write: ``prompt`` (the subject inside it) should
continue with ``target``. Datasets fill in ``target_true`` (the answer being replaced) and
the case's ``paraphrases``; the store fills in ``edit_id``. It lives in ``recall.core`` because
both the dataset loaders (:mod:`recall.core.datasets`) and the editors (``recall.methods``)
build it, and ``recall.core`` is the only layer both may import;
:mod:`recall.methods.editor` re-exports it beside the editor contract.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: ``prompt`` (subject filled in) should continue with ``target``.

    ``subject`` None (or absent from the prompt) makes the editors look the key up at the
    prompt's last token instead of the subject's last token."""

    prompt: str
    subject: str | None
    target: str
    target_true: str | None = None
    paraphrases: tuple[str, ...] = ()
    edit_id: str = ""
    aliases: tuple[str, ...] = ()  # other names of the subject (memory edits; weight editors ignore them)

    @property
    def target_new(self) -> str:
        """``target`` under its CounterFact/EasyEdit name, as dataset metrics read it."""
        return self.target

    @classmethod
    def from_edit(cls, edit: Any) -> EditRequest:
        """From a stored fact :class:`recall.core.edits.Edit`."""
        return cls(edit.payload["prompt"], edit.subject, edit.payload["target"], edit_id=edit.id)

    def for_editing(self, edit_id: str | None = None) -> EditRequest:
        """This request as the weight editors should write it: the subject dropped when the
        prompt does not contain it (a dataset's subject may be spelled differently in the
        prompt, and a subject the prompt lacks would still seed ROME's "<subject> is a" KL
        row), and ``edit_id`` set when given."""
        subject = self.subject if self.subject and self.subject.strip().casefold() in self.prompt.casefold() else None
        return replace(self, subject=subject, edit_id=self.edit_id if edit_id is None else edit_id)

    def subject_start(self) -> int | None:
        """Character offset of the subject in the prompt (case-insensitive), None if absent."""
        if self.subject:
            at = self.prompt.casefold().find(self.subject.casefold())
            if at >= 0:
                return at
        return None

    def subject_end(self) -> int:
        """Character offset just past the subject in the prompt (the prompt's end if none)."""
        at = self.subject_start()
        return len(self.prompt) if at is None or not self.subject else at + len(self.subject)
