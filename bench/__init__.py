"""``recall.bench``: benchmarks (lifelong edit streams on real data, consolidation, latency,
scale, serving, layer sweeps, causal traces), run with ``recall bench ...``.

The folder is ``bench/`` at the repository's top level; ``pyproject.toml`` maps it to
``recall.bench``. It is the top layer below the CLI: it may import everything else, and
nothing imports it except ``recall.cli``. Results are written under ``bench/results/``."""
