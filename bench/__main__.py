"""``python -m recall.bench latency ...``: the same commands as ``recall bench ...``."""

from recall.cli import bench_app

bench_app(prog_name="python -m recall.bench")
