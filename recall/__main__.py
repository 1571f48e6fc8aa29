"""``python -m recall ...``: the ``recall`` command (the server starts scheduled consolidation
jobs this way, with the interpreter it runs on)."""

from recall.cli import app

app(prog_name="recall")
