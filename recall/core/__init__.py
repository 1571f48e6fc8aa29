"""The base layer: what every other layer may import, and which imports nothing above it.

- ``errors``: the typed errors (published as ``recall.errors``);
- ``limits``: size limits on text and stores;
- ``text``: normalisation, subject focus, relation text;
- ``edits``: the edit record, its validation and JSONL form; ``regex_patch``: safe regexes;
- ``lm``: batched scoring and decoding over any causal LM (``RowPlan``, ``generate_rows``);
- ``models``: loading a model (the embedded default or any local Hugging Face directory) and
  the architecture facts the weight editors need (``ModelSpec``);
- ``chat``: conversation validation and the text that decides a chat turn's scope;
- ``datasets``: CounterFact, zsRE, KnowEdit and MQuAKE records as one ``EditCase``;
- ``resources``: package data through ``importlib.resources``;
- ``reporting``: tables, latency percentiles, torch threads.
"""
