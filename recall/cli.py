"""The `recall` command line: edit a store, query through it, run the demo and benchmarks.

Every command that opens a store loads the model and encoder too (the encoder computes the
retrieval keys), so expect a few seconds of start-up. Errors raised by recall itself are
printed as ``error: <message>`` on stderr with exit code 2, without a traceback.
"""

from __future__ import annotations

import datetime
import functools
import json
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from recall import demo as demo_mod
from recall.bench import (
    causal_trace,
    consolidation,
    flood,
    fuzz,
    headline,
    index_choice,
    ingest,
    killloop,
    latency,
    layer_sweep,
    lifelong,
    scale,
    serving,
)
from recall.bench import chat as chat_bench
from recall.core.errors import RecallError
from recall.core.models import load_model
from recall.core.reporting import pick_threads, torch_threads
from recall.gate import DEFAULT_GATE, GATE_KINDS
from recall.methods.consolidation import ConsolidationParams
from recall.methods.editor import DEFAULT_EDITOR, EDITORS, with_overrides
from recall.methods.layer_stats import N_PROBE_TEXTS
from recall.runtime import Runtime
from recall.server import ServerConfig
from recall.server import serve as run_server
from recall.server.auth import load_token
from recall.server.schedule import ConsolidationSchedule, parse_duration
from recall.training import gate_training, grace_tuning, recipe_training, relation_training

app = typer.Typer(
    name="recall",
    help="A retrieval-first runtime for lifelong knowledge editing of language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
edit_app = typer.Typer(
    help="Add, list, remove, import and export the edits of a store.", no_args_is_help=True, add_completion=False
)
bench_app = typer.Typer(no_args_is_help=True, add_completion=False)
app.add_typer(edit_app, name="edit")
app.add_typer(bench_app, name="bench")

F = TypeVar("F", bound=Callable[..., Any])

StoreArg = Annotated[Path, typer.Argument(help="Store directory (created by commands that write).")]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Local Hugging Face model directory (default: the embedded model).")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1, ...")]
ThreadsOpt = Annotated[
    int | None, typer.Option(min=1, help="Torch CPU threads (default: as many as the load average leaves idle).")
]
# a consolidation job's acceptance bounds, for `recall consolidate` and `recall serve --consolidate-*`
BOUNDS = ConsolidationParams()
MinAgreementOpt = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="Accept only if argmax agreement with the base model on the probe texts is at least this.",
    ),
]
MaxPplRatioOpt = Annotated[
    float, typer.Option(min=1.0, help="Accept only if probe perplexity / base perplexity is at most this.")
]
ProbeTextsOpt = Annotated[
    int,
    typer.Option(
        min=1,
        max=N_PROBE_TEXTS,
        help="How many held-out texts the two bounds are measured on (fewer: a faster job, coarser bounds).",
    ),
]


class Kind(str, Enum):
    fact = "fact"
    patch = "patch"
    regex = "regex"
    prompt = "prompt"
    codebook = "codebook"


class Scope(str, Enum):
    input = "input"
    output = "output"


class Status(str, Enum):
    active = "active"
    retired = "retired"
    consolidated = "consolidated"
    all = "all"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def handle_errors(fn: F) -> F:
    """Turn recall's typed errors (and file-system errors) into ``error: ...`` and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RecallError as exc:
            raise _fail(str(exc)) from None
        except OSError as exc:
            raise _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)) from None

    return wrapper  # type: ignore[return-value]


def _open(store: Path, model: str | None, device: str, *, readonly: bool = False):
    """Open a Runtime; read-only commands refuse a missing store instead of creating one."""

    if readonly and not store.is_dir():
        raise _fail(f"no store at {store}")
    return Runtime.open(store, model=model, device=device, readonly=readonly)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


# -- top-level commands ---------------------------------------------------------
@app.command()
@handle_errors
def demo(
    n: Annotated[int, typer.Option("--n", min=1, max=200, help="Number of CounterFact edits to stream.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed for the order of edits and the queries timed.")] = 0,
    store: Annotated[
        Path | None, typer.Option(help="Build the store here and keep it (default: a temporary directory).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write all numbers to this JSON file.")] = None,
    eval_n: Annotated[
        int | None,
        typer.Option("--eval-n", min=1, help="How many of the streamed edits to evaluate [default: 100]."),
    ] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Stream CounterFact edits into a fresh store on the embedded model and measure them."""

    extra = {} if eval_n is None else {"eval_n": eval_n}
    result = demo_mod.run(n=n, seed=seed, store=store, threads=threads, **extra)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


@app.command()
@handle_errors
def ask(
    store: StoreArg,
    prompt: Annotated[str, typer.Argument(help="The query text.")],
    max_new_tokens: Annotated[int, typer.Option(min=1, max=4096)] = 30,
    explain: Annotated[
        bool, typer.Option("--explain", help="Also print which edits were retrieved and fired.")
    ] = False,
    use_memory: Annotated[
        bool, typer.Option("--memory/--no-memory", help="--no-memory asks the unedited model.")
    ] = True,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Generate one greedy continuation of PROMPT through the store's edits."""
    rt = _open(store, model, device, readonly=True)
    try:
        (text,) = rt.generate([prompt], max_new_tokens=max_new_tokens, use_memory=use_memory)
        typer.echo(text)
        if explain:
            _print_json(rt.explain(prompt))
    finally:
        rt.close()


@app.command()
@handle_errors
def serve(
    store: StoreArg,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    token_file: Annotated[
        Path | None, typer.Option(help="File holding the API token (default: $RECALL_API_TOKEN).")
    ] = None,
    auth_reads: Annotated[
        bool, typer.Option("--auth-reads/--no-auth-reads", help="Require the token for reads and queries too.")
    ] = False,
    model_name: Annotated[str | None, typer.Option(help="Model id in /v1/models (default: recall-<type>).")] = None,
    max_batch: Annotated[int, typer.Option(min=1, max=1024, help="Rows in one forward pass.")] = 32,
    max_batch_tokens: Annotated[
        int, typer.Option(min=1, help="Rows x longest prompt in one forward pass (bounds its memory).")
    ] = 8192,
    batch_window_ms: Annotated[float, typer.Option(min=0, help="Wait this long for more requests.")] = 5.0,
    max_queue: Annotated[int, typer.Option(min=1, help="Queued requests before 429.")] = 256,
    max_tokens_limit: Annotated[int, typer.Option(min=1, max=4096, help="Largest max_tokens allowed.")] = 256,
    timeout: Annotated[float, typer.Option(min=0.1, help="Per-request timeout in seconds.")] = 60.0,
    use_memory: Annotated[
        bool, typer.Option("--memory/--no-memory", help="--no-memory serves the unedited model.")
    ] = True,
    readonly: Annotated[bool, typer.Option("--readonly", help="Open the store read-only (no edit writes).")] = False,
    consolidate_every: Annotated[
        str | None,
        typer.Option(help="Run a consolidation job this often while serving (90s, 30m, 6h, 1d); off by default."),
    ] = None,
    consolidate_min_edits: Annotated[
        int, typer.Option(min=1, help="Start a scheduled job only when this many fact edits are active.")
    ] = 1,
    consolidate_method: Annotated[str, typer.Option(help="Editor of scheduled jobs.")] = DEFAULT_EDITOR,
    consolidate_hparams: Annotated[
        str | None, typer.Option(help="Hyper-parameter JSON of scheduled jobs (default: the model family's).")
    ] = None,
    consolidate_batch_size: Annotated[
        int, typer.Option(min=1, help="Edits written per batch in scheduled jobs.")
    ] = 100,
    consolidate_min_probe_agreement: MinAgreementOpt = BOUNDS.min_probe_agreement,
    consolidate_max_ppl_ratio: MaxPplRatioOpt = BOUNDS.max_ppl_ratio,
    consolidate_probe_texts: ProbeTextsOpt = BOUNDS.probe_texts,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Serve STORE over an OpenAI-compatible HTTP API with an edit admin API and a web page.
    With --consolidate-every, consolidation jobs run in a child process on that schedule; the
    server switches to each new checkpoint between requests (responses name it in
    ``system_fingerprint``)."""

    config = ServerConfig(
        model_name=model_name,
        token=load_token(token_file),
        auth_reads=auth_reads,
        use_memory=use_memory,
        batch_window_ms=batch_window_ms,
        max_batch=max_batch,
        max_batch_tokens=max_batch_tokens,
        max_queue=max_queue,
        max_tokens_limit=max_tokens_limit,
        request_timeout_s=timeout,
    )
    schedule = None
    if consolidate_every is not None:
        if readonly:
            raise typer.BadParameter("--consolidate-every needs a writable store (not --readonly)")
        try:
            bounds = ConsolidationParams(
                min_probe_agreement=consolidate_min_probe_agreement,
                max_ppl_ratio=consolidate_max_ppl_ratio,
                probe_texts=consolidate_probe_texts,
            )
            schedule = ConsolidationSchedule(
                parse_duration(consolidate_every),
                consolidate_min_edits,
                consolidate_method,
                batch_size=consolidate_batch_size,
                hparams=consolidate_hparams,
                bounds=bounds,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    run_server(store, config, host=host, port=port, model=model, device=device, readonly=readonly, schedule=schedule)


# -- edit sub-commands ------------------------------------------------------------
@edit_app.command("add")
@handle_errors
def edit_add(
    store: StoreArg,
    kind: Annotated[
        Kind,
        typer.Option(
            help="fact (prompt/target), patch (--text), regex (--pattern), prompt (a RECIPE continuous "
            "prompt from prompt/target) or codebook (a GRACE entry trained on prompt/target)."
        ),
    ] = Kind.fact,
    prompt: Annotated[str | None, typer.Option(help="fact: the prompt, e.g. 'The CEO of Acme is'.")] = None,
    target: Annotated[str | None, typer.Option(help="fact: the new answer.")] = None,
    subject: Annotated[str | None, typer.Option(help="fact: the subject, as written in the prompt.")] = None,
    relation: Annotated[str | None, typer.Option(help="fact: a relation name, e.g. P27.")] = None,
    alias: Annotated[
        list[str] | None, typer.Option(help="fact: another name of the subject (repeatable), e.g. --alias Obama.")
    ] = None,
    short_name: Annotated[
        list[str] | None,
        typer.Option(help="fact: a short form of the subject (repeatable); replaces the derived ones (Nadella)."),
    ] = None,
    no_short_names: Annotated[
        bool, typer.Option("--no-short-names", help="fact: derive no short forms of the subject.")
    ] = False,
    text: Annotated[str | None, typer.Option(help="patch: 'If <condition>, then <consequence>'.")] = None,
    pattern: Annotated[str | None, typer.Option(help="regex: the pattern.")] = None,
    replacement: Annotated[str | None, typer.Option(help="regex: the replacement.")] = None,
    scope: Annotated[Scope | None, typer.Option(help="regex: rewrite the input or the output.")] = None,
    ignore_case: Annotated[bool, typer.Option("--ignore-case", help="regex: match case-insensitively.")] = False,
    provenance: Annotated[str, typer.Option(help="Who or what added the edit.")] = "cli",
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Add one edit and print it as JSON."""
    given = {
        "prompt": prompt,
        "target": target,
        "subject": subject,
        "relation": relation,
        "aliases": alias or None,
        "short_names": [] if no_short_names else (short_name or None),
        "text": text,
        "pattern": pattern,
        "replacement": replacement,
        "scope": scope.value if scope is not None else None,
        "ignore_case": ignore_case or None,
    }
    # only what was given: the edit's own validation then names a missing or misplaced field
    fields = {k: v for k, v in given.items() if v is not None}
    rt = _open(store, model, device)
    try:
        edit = rt.add_edit(kind.value, provenance=provenance, **fields)
        _print_json(edit.to_dict())
    finally:
        rt.close()


def _summary(edit) -> str:
    p = edit.payload
    if edit.kind == "fact":
        return f"{p['prompt']} -> {p['target']}"
    if edit.kind == "patch":
        return f"If {p['condition']}, then {p['consequence']}"
    if edit.kind == "regex":
        return f"{p['scope']}: s/{p['pattern']}/{p['replacement']}/" + ("i" if p.get("ignore_case") else "")
    return json.dumps(p, ensure_ascii=False)


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@edit_app.command("list")
@handle_errors
def edit_list(
    store: StoreArg,
    status: Annotated[Status, typer.Option(help="Which edits to list.")] = Status.active,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of full records.")] = False,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """List the edits of a store (active ones by default)."""
    rt = _open(store, model, device, readonly=True)
    try:
        edits = rt.edits(None if status is Status.all else status.value)
    finally:
        rt.close()
    if as_json:
        _print_json([e.to_dict() for e in edits])
        return
    if not edits:
        typer.echo("no edits" if status is Status.all else f"no {status.value} edits")
        return
    headers = ["id", "kind", "status", "created", "subject", "edit"]
    rows = [
        [
            e.id,
            e.kind,
            e.status,
            datetime.datetime.fromtimestamp(e.created_at).strftime("%Y-%m-%d %H:%M"),
            _cut(e.subject or "-", 24),
            _cut(_summary(e), 70),
        ]
        for e in edits
    ]
    widths = [max(len(r[j]) for r in [headers, *rows]) for j in range(len(headers))]
    for row in [headers, ["-" * w for w in widths], *rows]:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    typer.echo(f"{len(edits)} edit(s)")


@edit_app.command("remove")
@handle_errors
def edit_remove(
    store: StoreArg,
    edit_id: Annotated[str, typer.Argument(metavar="ID", help="The id of the edit to retire.")],
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Retire an edit (it stays in the store with status 'retired')."""
    if not store.is_dir():
        raise _fail(f"no store at {store}")
    rt = _open(store, model, device)
    try:
        edit = rt.remove_edit(edit_id)
    finally:
        rt.close()
    typer.echo(f"retired {edit.id}")


@edit_app.command("import")
@handle_errors
def edit_import(
    store: StoreArg,
    file: Annotated[Path, typer.Argument(metavar="FILE.jsonl", help="One edit per line (as `export` writes).")],
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Import edits from JSONL; a bad line leaves the store unchanged."""
    if not file.is_file():
        raise _fail(f"no such file: {file}")
    rt = _open(store, model, device)
    try:
        counts = rt.import_jsonl(file, progress=True)
    finally:
        rt.close()
    typer.echo(f"imported {counts['imported']}, skipped {counts['skipped']} already present")


@edit_app.command("export")
@handle_errors
def edit_export(
    store: StoreArg,
    file: Annotated[Path, typer.Argument(metavar="FILE.jsonl", help="Where to write (replaced atomically).")],
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Export every edit (all statuses) as JSONL."""
    rt = _open(store, model, device, readonly=True)
    try:
        n = rt.export_jsonl(file)
    finally:
        rt.close()
    typer.echo(f"exported {n} edit(s) to {file}")


# -- bench sub-commands -----------------------------------------------------------
@bench_app.callback()
def bench() -> None:
    """Benchmarks (see bench/). Also runnable as `python -m recall.bench ...`.

    \b
    latency      edit/query latency vs the bare model.
    serving      HTTP throughput and p50/p95, bare model vs runtime.
    scale        add_edit/query latency, FAISS index at 10^3..10^5 edits.
    lifelong     editing on real data; results.json, summary.md, plots.
    headline     merge lifelong runs into one table and one plot.
    consolidation  ROME/MEMIT/AlphaEdit on CounterFact, single or sequential (no encoder needed).
    layer-sweep  ROME single-edit ES/PS/NS per candidate layer.
    causal-trace where a fact is recalled (ROME's causal tracing).
    \b
    Datasets (--format, auto-detected):
      counterfact  ROME or MEND/EasyEdit schema (ES/PS/NS + magnitudes)
      zsre         MEND schema, optional portability
      knowedit     prompt/target_new/locality{}/portability{}
      mquake       multi-hop questions (multi-hop accuracy)
    \b
    Protocols (--protocol):
      lifelong  T edits one by one, then all T cases evaluated (WISE)
      batch     all T cases in one apply call, then evaluated; same
                numbers as lifelong for runtime editors; one fine-tune
                for ft-l; memit/alphaedit: one batch if --edit-batch >= T
      single    fresh store/weights per edit
    \b
    Editors (--editors):
      unedited             the bare model
      recall               relation gate + auto injection (default)
      recall-learned, recall-subject, recall-cosine, recall-context, recall-slot,
      recall-both          variants (other gate / injection)
      ike                  facts always in context, no gate
      ft-l                 constrained fine-tuning of one MLP layer
      rome, memit, alphaedit  sequential weight editors (slow on CPU)
      recall-consolidated  stream, then consolidate with AlphaEdit"""
    # a callback keeps `bench` a command group while it has a single command, so that
    # `python -m recall.bench latency` and later sub-commands (lifelong, ...) parse alike


@bench_app.command("latency")
@handle_errors
def bench_latency(
    n_edits: Annotated[int, typer.Option(min=1, help="Edits streamed into the store.")] = 1000,
    n_queries: Annotated[int, typer.Option(min=1, help="Queries timed per group (edit / locality).")] = 30,
    data: Annotated[
        Path | None,
        typer.Option(help="CounterFact JSON (MEND schema); default: ../shared/data/... if present, else the sample."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write latency.json and latency.md here.")] = None,
    kind: Annotated[Kind, typer.Option(help="Edit kind streamed in: fact, prompt or codebook.")] = Kind.fact,
    gate: Annotated[str, typer.Option(help=f"One of {', '.join(GATE_KINDS)}.")] = DEFAULT_GATE,
    form: Annotated[
        str,
        typer.Option(
            help="cloze: generate and score on prompts; chat: Runtime.chat on user turns "
            "(zsRE questions if ../shared/data has them, else the packaged training conversations; "
            "--data takes any edit file or conversation set)."
        ),
    ] = "cloze",
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Edit latency, query latency relative to the bare model, store size and peak memory."""

    latency.run(
        n_edits=n_edits,
        n_queries=n_queries,
        out=out,
        data=data,
        model=model,
        device=device,
        threads=threads,
        kind=kind.value,
        gate=gate,
        form=form,
    )


@bench_app.command("serving")
@handle_errors
def bench_serving(
    n_edits: Annotated[int, typer.Option(min=1, help="Edits streamed into the store.")] = 1000,
    concurrency: Annotated[str, typer.Option(help="Client concurrency levels, comma-separated.")] = "1,8,32",
    requests: Annotated[
        int | None, typer.Option(min=1, help="Requests per system, level and round [default: max(8, 2c)].")
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=1, max=256, help="Completion tokens per request.")] = 16,
    data: Annotated[
        Path | None,
        typer.Option(help="CounterFact JSON (MEND schema); default: ../shared/data/... if present, else the sample."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write serving.json and serving.md here.")] = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """HTTP serving throughput and p50/p95 latency, bare model vs runtime, at several concurrencies."""

    try:
        levels = [int(c) for c in concurrency.split(",") if c.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"--concurrency must be comma-separated integers, got {concurrency!r}") from exc
    serving.run(
        n_edits=n_edits,
        concurrency=levels,
        requests=requests,
        max_tokens=max_tokens,
        out=out,
        data=data,
        model=model,
        device=device,
        threads=threads,
    )


@bench_app.command("fuzz")
@handle_errors
def bench_fuzz(
    n: Annotated[int, typer.Option(min=1, help="Requests to send.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the generated requests.")] = 0,
    out: Annotated[Path, typer.Option(help="JSON report; a markdown summary goes beside it.")] = Path(
        "bench/results/fuzz/fuzz.json"
    ),
    threads: ThreadsOpt = None,
) -> None:
    """HTTP fuzzing of every endpoint from the server's OpenAPI schema: no 500, no store change
    on a rejected write (exit status 1 otherwise)."""
    argv = ["--n", str(n), "--seed", str(seed), "--out", str(out)] + (["--threads", str(threads)] if threads else [])
    if fuzz.main(argv):
        raise typer.Exit(1)


@bench_app.command("killloop")
@handle_errors
def bench_killloop(
    kills: Annotated[int, typer.Option(min=1, help="Writers to SIGKILL, spread over the kinds.")] = 30,
    kinds: Annotated[str, typer.Option(help="Comma-separated: add, import, consolidate.")] = "add,import,consolidate",
    seed: Annotated[int, typer.Option(help="Seed of the kill times and the written facts.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
) -> None:
    """SIGKILL writers during add_edit streams, bulk imports and consolidation; reopen and check
    that no acknowledged edit is lost or duplicated and the served weights are the head's."""
    argv = ["--kills", str(kills), "--kinds", kinds, "--seed", str(seed)] + (["--out", str(out)] if out else [])
    if killloop.main(argv):
        raise typer.Exit(1)


@bench_app.command("flood")
@handle_errors
def bench_flood(
    clients: Annotated[int, typer.Option(min=1, help="Concurrent clients.")] = 64,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of flooding.")] = 120.0,
    out: Annotated[Path | None, typer.Option(help="Write flood.json and summary.md here.")] = None,
) -> None:
    """Server memory under a flood of maximum-size requests (`recall serve` in a subprocess)."""
    flood.main(["--clients", str(clients), "--duration", str(duration)] + (["--out", str(out)] if out else []))


@bench_app.command("scale")
@handle_errors
def bench_scale(
    sizes: Annotated[str, typer.Option(help="Store sizes, comma-separated, measured on one growing store.")] = (
        "1000,10000,100000"
    ),
    n_queries: Annotated[int, typer.Option(min=1, help="Queries timed per size (edit and unrelated prompts).")] = 20,
    n_add: Annotated[int, typer.Option(min=1, help="Real add_edit calls timed at each size.")] = 50,
    out: Annotated[Path | None, typer.Option(help="Write scale.json, scale.md and scale.png here.")] = None,
    budget_s: Annotated[
        float | None, typer.Option(help="Skip sizes that would end past this many seconds from the start.")
    ] = None,
    store: Annotated[Path | None, typer.Option(help="Build the store in this new directory and keep it.")] = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """add_edit, retrieval and query latency, index type, footprint and re-open time vs store size."""

    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"--sizes must be comma-separated integers, got {sizes!r}") from exc
    scale.run(
        sizes=size_list,
        n_queries=n_queries,
        out=out,
        n_add=n_add,
        budget_s=budget_s,
        store=store,
        model=model,
        device=device,
        threads=threads,
    )


@bench_app.command("index")
@handle_errors
def bench_index(
    sizes: Annotated[str, typer.Option(help="Numbers of keys, comma-separated.")] = "10000,100000,1000000",
    n_queries: Annotated[int, typer.Option(min=1, help="Queries per size.")] = 200,
    cache: Annotated[Path | None, typer.Option(help="Keep the encoded keys here and reuse them.")] = None,
    hnsw_max: Annotated[int, typer.Option(help="Build HNSW only up to this many keys (slow to build).")] = 200_000,
    out: Annotated[Path | None, typer.Option(help="Write index.json, index.md and index.png here.")] = None,
) -> None:
    """Flat, HNSW, IVF and IVF-PQ on the runtime's key vectors: recall@8, latency, memory, updates."""
    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"--sizes must be comma-separated integers, got {sizes!r}") from exc
    index_choice.run(size_list, out, n_queries=n_queries, cache=cache, hnsw_max=hnsw_max)


@bench_app.command("import")
@handle_errors
def bench_import(
    n: Annotated[int, typer.Option(min=1, help="Fact edits per import.")] = 3000,
    data: Annotated[
        Path | None, typer.Option(help="Also import this CounterFact file's prompts and subjects.")
    ] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Runs per path on fresh stores (the median is reported).")] = 3,
    out: Annotated[Path | None, typer.Option(help="Write ingest.json, ingest.md and ingest.png here.")] = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Bulk ingestion: fact edits per second through rt.import_jsonl and POST /v1/edits/import."""
    ingest.run(n=n, data=data, repeats=repeats, out=out, model=model, device=device, threads=threads)


@bench_app.command("lifelong")
@handle_errors
def bench_lifelong(
    data: Annotated[Path, typer.Option(help="Dataset JSON / JSON-lines file (see `recall bench --help`).")],
    out: Annotated[Path, typer.Option(help="Write results.json, summary.md and *.png here.")],
    fmt: Annotated[
        str, typer.Option("--format", help="counterfact, zsre, knowedit, mquake, or auto (detect).")
    ] = "auto",
    editors: Annotated[
        str,
        typer.Option(
            help="Comma-separated: unedited, recall, recall-subject, recall-cosine, recall-sentinel, "
            "recall-krm-sentinel, recall-context, recall-prompt (continuous-prompt edits), recall-codebook (GRACE "
            "codebook edits), ike, ft-l, "
            "rome, memit, alphaedit (sequential weight editors), recall-consolidated (stream, then consolidate)."
        ),
    ] = "unedited,recall,ike,ft-l",
    t: Annotated[str, typer.Option("--T", help="Comma-separated stream lengths T.")] = "1,10",
    limit: Annotated[int | None, typer.Option(min=1, help="Use only the first N valid records.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the case shuffle (same cases for every editor).")] = 0,
    protocol: Annotated[
        str,
        typer.Option(
            help="lifelong: T edits one by one, then evaluate all; batch: all T edits in one call, then "
            "evaluate all; single: fresh store/weights per edit."
        ),
    ] = "lifelong",
    generation: Annotated[bool, typer.Option(help="Also compute greedy-generation metrics.")] = True,
    fluency_n: Annotated[int, typer.Option(min=0, help="Edit prompts generated from for fluency (0: off).")] = 10,
    ppl_texts: Annotated[int, typer.Option(min=0, help="WikiBio texts for perplexity (0: off).")] = 10,
    edit_batch: Annotated[
        int, typer.Option(min=1, help="Batch size of memit/alphaedit/recall-consolidated (ROME: always 1).")
    ] = 100,
    model: ModelOpt = None,
    encoder: Annotated[
        str | None, typer.Option(help="Local sentence-transformers directory (default: the embedded MiniLM).")
    ] = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Sequential (lifelong) editing on real data: per T and editor, reset, stream T cases' edits, then
    evaluate all T cases (WISE protocol). Writes results.json, summary.md and metric-vs-T plots."""

    lifelong.run(
        data,
        out,
        fmt=None if fmt == "auto" else fmt,
        editors=[e.strip() for e in editors.split(",") if e.strip()],
        ts=[int(x) for x in t.split(",") if x.strip()],
        limit=limit,
        seed=seed,
        protocol=protocol,
        generation=generation,
        fluency_n=fluency_n,
        ppl_texts=ppl_texts,
        model=model,
        encoder_path=encoder,
        device=device,
        threads=threads,
        edit_batch=edit_batch,
    )
    typer.echo((out / "summary.md").read_text(encoding="utf-8"))


@bench_app.command("chat")
@handle_errors
def bench_chat(
    data: Annotated[
        str,
        typer.Option(
            help="bench/data/conversations_dev.jsonl (hand-written) or zsRE/CounterFact/KnowEdit files "
            "(comma-separated: concatenated, repeated prompts dropped)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Write results.json, summary.md and chat.png here.")],
    editors: Annotated[
        str,
        typer.Option(
            help="Comma-separated: unedited, recall, recall-subject, recall-cosine, recall-sentinel, "
            "recall-krm-sentinel, recall-slot, recall-context, ike."
        ),
    ] = "unedited,recall,ike",
    t: Annotated[str, typer.Option("--T", help="Comma-separated stream lengths T.")] = "1,100",
    limit: Annotated[int | None, typer.Option(min=1, help="Use only the first N cases.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the case shuffle (same cases for every editor).")] = 0,
    shuffle: Annotated[bool, typer.Option(help="Shuffle the cases (else file order, as chat-check).")] = True,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=512, help="Greedy tokens per reply.")] = 24,
    replies: Annotated[bool, typer.Option(help="Generate and judge replies (else: the gate's firing only).")] = True,
    aliases: Annotated[bool, typer.Option(help="Give edits the hand-written set's subject aliases.")] = True,
    ask: Annotated[
        int | None,
        typer.Option(min=1, help="Judge replies on a seeded sample of N of the T edits (firing: all T)."),
    ] = None,
    model: ModelOpt = None,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
) -> None:
    """Edits asked through the chat template: per T and editor, write T edits, then ask each as a user
    turn, a paraphrase, a second turn and a pronoun follow-up, and check unrelated, same-subject and
    same-relation replies stay byte-identical. Writes results.json, summary.md and chat.png."""
    paths = [Path(p.strip()) for p in data.split(",") if p.strip()]
    if not paths:
        raise _fail("--data names no file")
    chat_bench.run(
        paths if len(paths) > 1 else paths[0],
        out,
        editors=[e.strip() for e in editors.split(",") if e.strip()],
        ts=[int(x) for x in t.split(",") if x.strip()],
        limit=limit,
        seed=seed if shuffle else None,
        max_new_tokens=max_new_tokens,
        model=model,
        device=device,
        threads=threads,
        replies_too=replies,
        use_aliases=aliases,
        ask=ask,
    )
    typer.echo((out / "summary.md").read_text(encoding="utf-8"))


@bench_app.command("headline")
@handle_errors
def bench_headline(
    results: Annotated[
        str,
        typer.Option(
            help="Comma-separated lifelong run directories (results.json, or summary.md for older runs) or "
            "results.json files; later ones win for the same dataset, editor and T."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Write headline.md and headline.png here.")],
    t: Annotated[str | None, typer.Option("--T", help="Keep only these stream lengths (comma-separated).")] = None,
) -> None:
    """Merge lifelong runs into one table (dataset x editor x T: Rel/Gen/Loc/Port teacher-forced,
    ES/PS/NS, Rel/Gen/Loc generation) and one plot (metric vs T per editor, a column per dataset)."""

    paths = [Path(p.strip()) for p in results.split(",") if p.strip()]
    ts = [int(x) for x in t.split(",") if x.strip()] if t else None
    typer.echo(headline.run(paths, out, ts))


gate_app = typer.Typer(help="The gate that decides whether a retrieved edit is in scope.", no_args_is_help=True)
app.add_typer(gate_app, name="gate")


@gate_app.command("train")
@handle_errors
def gate_train(
    data: Annotated[
        Path, typer.Option(help="The shared data folder (CounterFact, zsRE, distracting neighbors).")
    ] = Path("../shared/data"),
    out: Annotated[Path, typer.Option(help="Where to write the gate parameters (JSON).")] = Path(
        "recall/data/gate.json"
    ),
    report: Annotated[Path, typer.Option(help="Where to write the markdown evaluation report.")] = Path(
        "recall/data/gate_report.md"
    ),
    n_train: Annotated[int, typer.Option(min=10, help="CounterFact-train records sampled for training.")] = 3000,
    n_dev: Annotated[int, typer.Option(min=10, help="counterfact-edit records used for the dev evaluation.")] = 600,
    seed: int = 0,
) -> None:
    """Train the learned gate, tune the cosine and subject gates, and compare all three on dev."""

    result = gate_training.train(data, out, report, n_train=n_train, n_dev=n_dev, seed=seed)
    typer.echo(result["report"])
    typer.echo(f"wrote {out} and {report} in {result['seconds']:.0f} s")


@gate_app.command("train-relation")
@handle_errors
def gate_train_relation(
    data: Annotated[Path, typer.Option(help="The shared data folder (CounterFact, zsRE, KnowEdit, MQuAKE).")] = Path(
        "../shared/data"
    ),
    out: Annotated[Path, typer.Option(help="Where to write the scorer checkpoint.")] = Path(
        "recall/data/relation_scorer.pt"
    ),
    report: Annotated[Path, typer.Option(help="Where to write the markdown report.")] = Path(
        "recall/data/relation_scorer_report.md"
    ),
    hparams: Annotated[Path | None, typer.Option(help="JSON file of RelationHParams fields.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Override the number of training steps.")] = None,
) -> None:
    """Train the relation gate's cross-encoder (low-rank updates of the retrieval encoder)."""

    hp = relation_training.RelationHParams.load(hparams)
    if steps is not None:
        hp.steps = steps
    result = relation_training.train(data, out, report, hp)
    typer.echo(result["report"])
    typer.echo(f"wrote {out} and {report} in {result['seconds']:.0f} s")


@gate_app.command("train-sentinel")
@handle_errors
def gate_train_sentinel(
    data: Annotated[Path, typer.Option(help="The shared data folder (CounterFact, zsRE, KnowEdit, MQuAKE).")] = Path(
        "../shared/data"
    ),
    scorer: Annotated[
        Path | None, typer.Option(help="The relation scorer checkpoint to add a sentinel to (default: shipped).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where to write the scorer checkpoint with its sentinel.")] = Path(
        "recall/data/relation_scorer.pt"
    ),
    report: Annotated[Path, typer.Option(help="Where to write the markdown report.")] = Path(
        "recall/data/relation_sentinel_report.md"
    ),
    hparams: Annotated[Path | None, typer.Option(help="JSON file of SentinelHParams fields.")] = None,
) -> None:
    """Learn the sentinel gate's sentinel against a frozen relation scorer (train splits only)."""

    sp = relation_training.SentinelHParams.load(hparams)
    result = relation_training.train_sentinel(data, out, scorer, report, sp)
    typer.echo(result["report"])
    typer.echo(f"wrote {out} and {report} in {result['seconds']:.0f} s")


@gate_app.command("compare")
@handle_errors
def gate_compare(
    data: Annotated[Path, typer.Option(help="The shared data folder.")] = Path("../shared/data"),
    report: Annotated[Path, typer.Option(help="Markdown report to write.")] = Path(
        "recall/data/gate_sentinel_report.md"
    ),
    n_dev: Annotated[int, typer.Option(min=10, help="counterfact-edit records in the dev pairs.")] = 600,
    recipe: Annotated[
        Path | None, typer.Option(help="Continuous-prompt checkpoint whose sentinel to compare (default: shipped).")
    ] = None,
    scorer: Annotated[
        Path | None,
        typer.Option(help="Relation scorer checkpoint of the relation and sentinel gates (default: shipped)."),
    ] = None,
) -> None:
    """Every gate on the same dev pairs: gate.json's, the relation scorer's two, RECIPE's own sentinel."""

    result = gate_training.compare_with_sentinel(data, report, n_dev=n_dev, recipe_dir=recipe, scorer=scorer)
    typer.echo(result["report"])


grace_app = typer.Typer(help="GRACE codebook edits: the layer and radius they use.", no_args_is_help=True)
app.add_typer(grace_app, name="grace")


@grace_app.command("tune")
@handle_errors
def grace_tune(
    data: Annotated[Path, typer.Option(help="The shared data folder (CounterFact train and eval).")] = Path(
        "../shared/data"
    ),
    out: Annotated[Path, typer.Option(help="Where to write grace_tuning.json and grace_tuning.md.")] = Path(
        "bench/results/grace_tuning"
    ),
    n: Annotated[int, typer.Option(min=10, help="Records of each split.")] = 500,
    model: ModelOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Choose GRACE's layer and radius on CounterFact TRAIN by key distances, then report the choice
    on the eval split (recall/training/grace_tuning.py). Does not change the shipped file."""
    lm, tok, spec = load_model(model, device)
    grace_tuning.run(data, out, lm, tok, spec, n=n)
    typer.echo((out / "grace_tuning.md").read_text(encoding="utf-8"))


recipe_app = typer.Typer(help="The continuous-prompt model (RECIPE) behind prompt edits.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")


@recipe_app.command("train")
@handle_errors
def recipe_train(
    data: Annotated[Path, typer.Option(help="The shared data folder (CounterFact train, zsRE train).")] = Path(
        "../shared/data"
    ),
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")] = Path("recall/data/recipe"),
    retrieval_steps: Annotated[int, typer.Option(min=0, help="Steps of the encoder/sentinel phase.")] = 1500,
    retrieval_batch: Annotated[int, typer.Option(min=2, help="Records per contrastive step.")] = 32,
    prompt_steps: Annotated[int, typer.Option(min=0, help="Steps of the prompt-generator phase.")] = 150,
    prompt_batch: Annotated[int, typer.Option(min=1, help="Records per prompt-generator step.")] = 8,
    scope_steps: Annotated[
        int, typer.Option(min=0, help="Steps of the sentinel's scope phase (hard negatives; 0: skip).")
    ] = 0,
    scope_batch: Annotated[int, typer.Option(min=2, help="(query, edit) pairs per scope step.")] = 64,
    trainable_layers: Annotated[
        int | None, typer.Option(min=0, help="Top encoder layers to fine-tune (default: the checkpoint's).")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue from this checkpoint (e.g. --retrieval-steps 0 --prompt-steps 300).")
    ] = None,
    seed: int = 0,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Train the knowledge encoder, sentinel and prompt generator for a model (default: the
    embedded one) and write the checkpoint, its training log and report."""

    with torch_threads(pick_threads(threads)):
        report = recipe_training.train(
            data,
            out,
            load_model(model, device),
            retrieval_steps=retrieval_steps,
            retrieval_batch=retrieval_batch,
            prompt_steps=prompt_steps,
            prompt_batch=prompt_batch,
            scope_steps=scope_steps,
            scope_batch=scope_batch,
            trainable_layers=trainable_layers,
            seed=seed,
            resume=resume,
        )
    _print_json(report)


def _parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set KEY=JSON`` options as {KEY: value}; a malformed one is a usage error."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        try:
            if not (eq and key):
                raise ValueError("expected KEY=JSON")
            out[key] = json.loads(value)
        except ValueError as exc:
            raise typer.BadParameter(f"--set {item!r}: {exc}") from None
    return out


mend_app = typer.Typer(help="MEND's editor network (the mend consolidation backend).", no_args_is_help=True)
app.add_typer(mend_app, name="mend")


@mend_app.command("train")
@handle_errors
def mend_train(
    data: Annotated[Path, typer.Option(help="The shared data folder (CounterFact train/val, zsRE train).")] = Path(
        "../shared/data"
    ),
    out: Annotated[
        Path | None, typer.Option(help="Folder to write (default: the user cache, where consolidation looks).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Setting override FIELD=JSON, e.g. training.steps=500 or rank=64."),
    ] = None,
    hparams: Annotated[Path | None, typer.Option(help="MEND settings JSON (default: the model family's).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue from the network in this folder.")] = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Meta-train MEND's editor network for a model (default: the embedded one) on the train
    splits, keep the best by the CounterFact val split, and write it with its log and report."""
    from recall.methods import mend
    from recall.training import mend_training

    overrides = _parse_sets(set_)
    with torch_threads(pick_threads(threads)):
        loaded = load_model(model, device)
        try:
            hp = with_overrides(mend.MENDHyperParams.for_spec(loaded[2], hparams), overrides)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        report = mend_training.train(data, out, loaded, hp, resume=resume)
    _print_json({k: v for k, v in report.items() if k != "history"})


@mend_app.command("centre")
@handle_errors
def mend_centre(
    network: Annotated[Path, typer.Argument(help="Folder of a trained network (rewritten in place).")],
    data: Annotated[Path, typer.Option(help="The shared data folder (CounterFact and zsRE train).")] = Path(
        "../shared/data"
    ),
    n: Annotated[int | None, typer.Option(min=1, help="Train records to average (default: the settings').")] = None,
    hparams: Annotated[Path | None, typer.Option(help="MEND settings JSON (default: the model family's).")] = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Estimate a trained network's edit-independent change on train edits and store it with
    the network, so edits written in turn do not add it up (``recall mend train`` does this itself)."""
    from recall.methods import mend
    from recall.training import mend_training

    with torch_threads(pick_threads(threads)):
        loaded = load_model(model, device)
        hp = mend.MENDHyperParams.for_spec(loaded[2], hparams)
        extra = mend_training.centre(data, network, loaded, hp, n)
    _print_json({"network": str(network), "centre_edits": extra["centre_edits"]})


@bench_app.command("consolidation")
@handle_errors
def bench_consolidation(
    data: Annotated[Path, typer.Option(help="CounterFact JSON (ROME or MEND schema).")],
    out: Annotated[Path, typer.Option(help="Write results.json and summary.md here.")],
    protocol: Annotated[str, typer.Option(help="single (each edit alone) or sequential (batches).")] = "sequential",
    methods: Annotated[str, typer.Option(help=f"Comma-separated: {', '.join(EDITORS)}.")] = "alphaedit,memit",
    n: Annotated[int, typer.Option(min=1, help="Cases (seeded shuffle of the file).")] = 1000,
    batch_size: Annotated[int, typer.Option(min=1, help="Edits per batch (sequential protocol).")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the case shuffle.")] = 0,
    start: Annotated[int, typer.Option(min=0, help="Skip this many cases of the shuffle (continue a cut run).")] = 0,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Hyper-parameter override METHOD.FIELD=JSON, e.g. memit.mom2_update_weight=2000."),
    ] = None,
    budget_s: Annotated[
        float | None, typer.Option(help="Stop each method after S seconds; report the cases written.")
    ] = None,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(help="Sequential: save the state after every batch here; the same command resumes from it."),
    ] = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """The weight editors (ROME, MEMIT, AlphaEdit, FT-L, T-Patcher) on CounterFact: ES/PS/NS, probe
    agreement and perplexity ratio."""

    names = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in EDITORS]
    if unknown or protocol not in ("single", "sequential"):
        raise typer.BadParameter(f"methods must be among {', '.join(EDITORS)} and protocol single or sequential")
    overrides: dict[str, dict[str, Any]] = {}
    for key, value in _parse_sets(set_).items():
        method, dot, field = key.partition(".")
        if not (dot and field) or method not in names:
            raise typer.BadParameter(f"--set {key}=...: expected METHOD.FIELD=JSON for one of the chosen methods")
        overrides.setdefault(method, {})[field] = value
    try:
        result = consolidation.run(
            data,
            out,
            protocol,
            names,
            n,
            batch_size,
            seed,
            overrides,
            model,
            device,
            budget_s,
            start=start,
            checkpoint_dir=checkpoint_dir,
        )
    except ValueError as exc:  # what run() rejects before any work: protocol, --start, --set, --checkpoint-dir
        raise typer.BadParameter(str(exc)) from None
    typer.echo(consolidation.summary(result))


@bench_app.command("layer-sweep")
@handle_errors
def bench_layer_sweep(
    data: Annotated[Path, typer.Option(help="CounterFact JSON (ROME or MEND schema).")],
    out: Annotated[Path, typer.Option(help="Write layer_sweep.json and layer_sweep.md here.")],
    layers: Annotated[str, typer.Option(help="Comma-separated candidate layers.")] = "1,2,3,4,5,6,8,10,12",
    n: Annotated[int, typer.Option(min=1, help="Cases per layer (each written alone).")] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the case shuffle.")] = 0,
    model: ModelOpt = None,
    encoder: Annotated[str | None, typer.Option(help="Local sentence-transformers directory.")] = None,
    device: DeviceOpt = "cpu",
) -> None:
    """ROME single-edit efficacy/paraphrase/neighborhood per layer: the record behind the layer
    choices in methods/hparams/*/llama.json."""

    layer_sweep.run(data, out, [int(x) for x in layers.split(",") if x.strip()], n, seed, model, encoder, device)


@bench_app.command("causal-trace")
@handle_errors
def bench_causal_trace(
    data: Annotated[Path, typer.Option(help="CounterFact JSON (ROME or MEND schema).")],
    out: Annotated[Path, typer.Option(help="Write causal_trace.json, .md and .png here.")],
    n: Annotated[int, typer.Option(min=1, help="Facts to trace (ones the model prefers to their edit).")] = 100,
    samples: Annotated[int, typer.Option(min=1, help="Noise draws per fact.")] = 5,
    noise: Annotated[float, typer.Option(min=0.0, help="Noise std in units of the embedding std.")] = 3.0,
    window: Annotated[int, typer.Option(min=1, help="MLP layers restored together (centred).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the case shuffle and the noise.")] = 0,
    model: ModelOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """ROME's causal trace: which layers' states at the subject's last token restore a fact
    after the subject is corrupted; the record behind the edited layers."""

    causal_trace.run(data, out, n, samples, noise, window, seed, model, device)


@app.command("consolidate")
@handle_errors
def consolidate_cmd(
    store: StoreArg,
    method: Annotated[str, typer.Option(help=f"One of {', '.join(EDITORS)}.")] = DEFAULT_EDITOR,
    batch_size: Annotated[int, typer.Option(min=1, help="Edits written per batch.")] = 100,
    limit: Annotated[int | None, typer.Option(min=1, help="Consolidate at most N (oldest first).")] = None,
    hparams: Annotated[str | None, typer.Option(help="Hyper-parameter JSON (default: the model family's).")] = None,
    min_probe_agreement: MinAgreementOpt = BOUNDS.min_probe_agreement,
    max_ppl_ratio: MaxPplRatioOpt = BOUNDS.max_ppl_ratio,
    probe_texts: ProbeTextsOpt = BOUNDS.probe_texts,
    probe_tokens: Annotated[
        int, typer.Option(min=2, help="Each probe text is cut to this many tokens.")
    ] = BOUNDS.probe_tokens,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Fold the store's active fact edits into the weights, verify them with retrieval off,
    and write a checkpoint (served from then on). Prints the report as JSON; exit code 1 when
    the new weights were rejected (nothing changed)."""

    params = ConsolidationParams(
        min_probe_agreement=min_probe_agreement,
        max_ppl_ratio=max_ppl_ratio,
        probe_tokens=probe_tokens,
        probe_texts=probe_texts,
    )
    with Runtime.open(store, model=model, device=device) as rt:
        report = rt.consolidate(method, batch_size, limit, hparams=hparams, params=params)
    print(json.dumps(report.to_dict(), indent=1))
    if not report.accepted:
        raise typer.Exit(1)


@app.command("checkpoints")
@handle_errors
def checkpoints_cmd(store: StoreArg, model: ModelOpt = None, device: DeviceOpt = "auto") -> None:
    """List the store's weight checkpoints (the served one is marked head)."""

    with Runtime.open(store, model=model, device=device) as rt:
        print(json.dumps(rt.checkpoints(), indent=1))


@app.command("rollback")
@handle_errors
def rollback_cmd(
    store: StoreArg,
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint id, or 'base' for the unedited weights.")],
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Serve an earlier checkpoint (or the base weights); edits consolidated after it become active again."""

    with Runtime.open(store, model=model, device=device) as rt:
        print(json.dumps(rt.rollback(None if checkpoint == "base" else checkpoint), indent=1))


def main() -> None:  # pragma: no cover - `python -m recall.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
