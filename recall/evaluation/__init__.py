"""Evaluation through the public runtime API: the field's metrics and same-run latency.

Sits above the runtime (it calls ``Runtime.score``/``generate`` as users do) and below the
demo, the benchmarks and the training commands that report with it."""
