"""No silent wrong results: bad input exits 2 with one line and leaves --out usable, a run directory is
bound to its inputs' content, one process per run directory, Ctrl-C exits 130."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adl_jax import io
from adl_jax.cli import main
from adl_jax.method.diff import STATE, DiffSettings, compute_delta
from adl_jax.models.load import load_model
from conftest import random_texts, tiny_hf_model, tiny_tokenizer

ROOT = Path(__file__).parents[1]
PROGRESS = re.compile(r"[\w ,]+: +\d+%\|")  # a tqdm bar, e.g. "delta:  50%|", "alpha search, position 1:  25%|"
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny base/finetuned HF directories, a corpus, finetuning data (texts and chats) and bad files."""
    root = tmp_path_factory.mktemp("errors")
    for name, seed in (("base", 0), ("ft", 1)):
        tiny_hf_model("gemma3_text", root / name, seed=seed)
        tiny_tokenizer().save_pretrained(root / name)
    tiny_hf_model("gemma3_text", root / "wide", hidden_size=96)
    tiny_tokenizer().save_pretrained(root / "wide")
    rng = np.random.RandomState(0)
    # Words below w100 only, so that w100.. are not generic text for the audit's frequent finetuning tokens.
    texts = random_texts(rng, 80, vocab_size=100)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    turns = [{"role": "user", "content": "w120 w121"}, {"role": "assistant", "content": "w110 w111 w112"}]
    (root / "chats.jsonl").write_text((json.dumps({"messages": turns}) + "\n") * 12)
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in random_texts(rng, 12)))
    (root / "broken.jsonl").write_text('{"text": "w3 w4"}\n{"text": "w5 w6"}\n{"text": "w7\n')
    (root / "lists.jsonl").write_text("[1, 2]\n")
    (root / "numbers.jsonl").write_text('{"text": 5}\n')
    (root / "corpus.csv").write_text("text\nw3 w4\n")
    (root / "empty.txt").write_text("\n\n")
    (root / "latin1.txt").write_bytes(b"caf\xe9 w3 w4\n")
    (root / "a_dir.jsonl").mkdir()
    (root / "a_file").write_text("not a directory\n")
    (root / "no_config").mkdir()
    (root / "weights.bin").write_bytes(b"\0")
    (root / "bad.json").write_text('{"steps": 3,')
    (root / "list.json").write_text("[1, 2]")
    (root / "targets.json").write_text(json.dumps({"lora_targets": 5}))
    (root / "halfseed.json").write_text(json.dumps({"seed": 2.5}))
    (root / "boolseed.json").write_text(json.dumps({"seed": True}))
    for name, damage in (("bad_config", "config"), ("bad_weights", "weights")):
        tiny_hf_model("gemma3_text", root / name)
        tiny_tokenizer().save_pretrained(root / name)
        if damage == "config":
            (root / name / "config.json").write_text('{"model_type": ')
        else:
            weights = root / name / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:100])
    return root


def _diff(root: Path, out: str, *extra: str) -> list[str]:
    return [
        "diff",
        "--base",
        str(root / "base"),
        "--finetuned",
        str(root / "ft"),
        "--corpus",
        str(root / "corpus.jsonl"),
        "--samples",
        "16",
        "--n",
        "8",
        "--batch-size",
        "8",
        "--out",
        str(root / out),
        *extra,
    ]


def _refused(argv: list[str], message: str, capsys) -> None:
    """`adl ARGV` exits 2 printing exactly one line, which matches `message` and is no traceback."""
    assert main(argv) == 2, argv
    err = re.split(r"[\r\n]+", capsys.readouterr().err)
    err = [line for line in err if line.strip() and not PROGRESS.match(line)]
    assert len(err) == 1 and err[0].startswith(f"adl {argv[0]}: error: "), err
    assert message in err[0], (message, err[0])


def test_diff_bad_inputs_exit_2_with_one_line_and_leave_out_usable(files, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(files)
    root = files
    (root / "taken").write_text("a file where --out should be\n")
    capsys.readouterr()
    cases = {
        # group 1: values that used to give a wrong result with exit 0
        ("--batch-size", "-4"): "--batch-size -4: must be at least 1",
        ("--batch-size", "0"): "--batch-size 0: must be at least 1",
        ("--k", "0"): "--k 0: the number of positions analysed must be at least 1",
        ("--samples", "0"): "--samples 0: the number of texts",
        ("--samples", "-3"): "--samples -3",
        ("--n", "3"): "n=3 must exceed k=5",
        ("--layer", "-1"): "--layer -1: give a layer index >= 0 or a fraction in (0, 1)",
        ("--layer", "1.5"): "--layer 1.5",
        ("--layer", "7"): "--layer 7: this model has layers 0..2",
        ("--chat-before", "-1"): "--chat-before -1",
        ("--batch-size", "3", "--mesh", "data=2,model=4"): "--batch-size 3 must be a multiple of the 2 data shards",
        ("--mesh", "data=3"): "needs 3 devices but 8 are available",
        ("--mesh", "rows=8"): "rows",
        ("--samples", "5000"): "usable texts",
        # corpus files: named, with the line
        ("--corpus", str(root / "missing.jsonl")): "corpus file",
        ("--corpus", str(root / "a_dir.jsonl")): "is a directory, not a file",
        ("--corpus", str(root / "broken.jsonl")): "broken.jsonl:3 is not valid JSON",
        ("--corpus", str(root / "lists.jsonl")): "lists.jsonl:1 has no field 'text' (it has a JSON list)",
        ("--corpus", str(root / "numbers.jsonl")): "numbers.jsonl:1: field 'text' is a int, not a text",
        ("--corpus", str(root / "corpus.csv")): "unsupported corpus file type '.csv'",
        ("--corpus", str(root / "empty.txt")): "the corpus gave only 0 usable texts",
        ("--corpus", str(root / "latin1.txt")): "is not UTF-8 text",
        ("--column", "body"): "has no field 'body'",
        # models
        ("--base", str(root / "nope")): "no such file or directory",
        ("--base", "mdl_typo/base"): "'mdl_typo/base' is not a local path",  # a hub id, offline
        ("--base", "a_dir.jsonl/base"): "'a_dir.jsonl/base': no such file or directory",  # a mistyped path
        ("--base", str(root / "no_config")): "without config.json",
        ("--base", str(root / "weights.bin")): "neither a .gguf file nor an HF model directory",
        ("--base", str(root / "bad_config")): "config.json is not valid JSON",
        ("--base", str(root / "bad_weights")): "model.safetensors is not a readable safetensors file",
        ("--finetuned", str(root / "wide")): "differ in ['hidden_size'",
        ("--finetuned", str(root / "base")): "are the same weights, so delta would be 0",
        ("--out", str(root / "taken")): "is a file, not a run directory",
    }
    for change, message in cases.items():
        _refused(_replace(_diff(root, "d"), *change), message, capsys)
    assert main(_diff(root, "d")) == 0  # the corrected command, into the same --out
    assert json.loads((root / "d" / "meta.json").read_text())["samples"] == 16


def _replace(args: list[str], *flags_and_values: str) -> list[str]:
    """`args` with each flag's value set to the one after it (appended when absent)."""
    for flag, value in zip(flags_and_values[::2], flags_and_values[1::2]):
        if flag in args:
            i = args.index(flag)
            args = [*args[: i + 1], value, *args[i + 2 :]]
        else:
            args = [*args, flag, value]
    return args


def test_run_directory_and_lens_faults_are_named(files, capsys):
    root = files
    capsys.readouterr()
    assert main(_diff(root, "done")) == 0
    capsys.readouterr()
    _refused(["lens", str(root / "nothing")], "holds no finished delta run", capsys)
    _refused(["lens", str(root / "done"), "--top", "0"], "--top 0", capsys)
    _refused(_diff(root, "done", "--layer", "0"), "other settings (layer differ)", capsys)
    _refused(_diff(root, "done", "--dtype", "bfloat16"), "other settings (dtype differ)", capsys)
    for name, text in (("lens.json", "{"), ("meta.json", "[1,"), ("delta.safetensors", "xx")):
        kept = (root / "done" / name).read_bytes()
        (root / "done" / name).write_text(text)
        _refused(["lens", str(root / "done")], f"done/{name} is", capsys)
        (root / "done" / name).write_bytes(kept)
    assert main(["lens", str(root / "done"), "--top", "2"]) == 0

    # A truncated checkpoint of the running sums: named, with the fix; deleting it restarts the delta.
    state = root / "done" / STATE
    state.write_bytes(state.read_bytes()[:50])
    (root / "done" / "delta.safetensors").unlink()
    (root / "done" / "lens.json").unlink()
    _refused(_diff(root, "done"), "state.safetensors is corrupt or truncated", capsys)
    assert main(_diff(root, "done")) == 2 and "delete it to restart the delta" in capsys.readouterr().err
    state.unlink()
    assert main(_diff(root, "done")) == 0


def _finetune(root: Path, out: str, *extra: str) -> list[str]:
    return [
        "finetune",
        "--model",
        str(root / "base"),
        "--data",
        str(root / "docs.jsonl"),
        "--examples",
        "8",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--seq-len",
        "16",
        "--warmup",
        "1",
        "--lora-rank",
        "2",
        "--checkpoint-every",
        "0",
        "--eval-every",
        "0",
        "--no-progress",
        "--out",
        str(root / out),
        *extra,
    ]


def test_finetune_bad_inputs_exit_2_and_leave_out_usable(files, capsys):
    root = files
    capsys.readouterr()
    cases = {
        ("--lr", "-0.01"): "--lr -0.01: the learning rate must be > 0",
        ("--lr", "0"): "--lr 0.0",
        ("--lr", "nan"): "--lr nan",
        ("--lora-rank", "0"): "--lora-rank 0: the adapters' rank must be at least 1",
        ("--lora-alpha", "0"): "--lora-alpha 0.0",
        ("--lora-dropout", "1.5"): "--lora-dropout 1.5",
        ("--steps", "0"): "--steps 0: must be at least 1",
        ("--batch-size", "0"): "--batch-size 0",
        ("--seq-len", "0"): "--seq-len 0",
        ("--examples", "0"): "--examples 0",
        ("--warmup", "-1"): "--warmup -1",
        ("--weight-decay", "-1"): "--weight-decay -1.0",
        ("--grad-clip", "-1"): "--grad-clip -1.0",
        ("--eval-fraction", "1.5"): "eval_fraction in [0, 1)",
        ("--mode", "half"): "mode must be 'lora' or 'full'",
        ("--schedule", "step"): "schedule must be 'cosine' or 'linear'",
        ("--chat-template", str(root / "missing.jinja")): "--chat-template",
        ("--data", str(root / "broken.jsonl")): "broken.jsonl:3 is not valid JSON",
        ("--data", str(root / "a_dir.jsonl")): "Is a directory",
        ("--config", str(root / "bad.json")): "bad.json is not valid JSON",
        ("--config", str(root / "list.json")): "holds a JSON list, not an object of settings",
        ("--config", str(root / "a_dir.jsonl")): "is a directory, not a JSON file",
        ("--config", str(root / "targets.json")): "setting lora_targets: 5 is not a list of names",
        ("--config", str(root / "halfseed.json")): "setting seed: 2.5 is not a int",
        ("--config", str(root / "boolseed.json")): "setting seed: True is not a int",
        ("--out", str(root / "a_file")): "is a file, not a run directory",
    }
    for (flag, value), message in cases.items():
        _refused(_replace(_finetune(root, "ft_run"), flag, value), message, capsys)
    assert main(_finetune(root, "ft_run")) == 0


def _audit(root: Path, *extra: str) -> list[str]:
    return [
        "audit",
        "--base",
        str(root / "base"),
        "--finetuned",
        str(root / "ft"),
        "--corpus",
        str(root / "corpus.jsonl"),
        "--quick",
        "--samples",
        "16",
        "--n",
        "8",
        "--batch-size",
        "8",
        "--steer-positions",
        "1",
        "--finetune-data",
        str(root / "chats.jsonl"),
        "--out",
        str(root / "audit"),
        *extra,
    ]


def test_audit_bad_inputs_then_chat_finetune_data(files, capsys, monkeypatch):
    monkeypatch.delenv("ADL_GRADER_BASE_URL", raising=False)
    monkeypatch.delenv("ADL_GRADER_MODEL", raising=False)
    monkeypatch.setattr("adl_jax.experiments.audit.default_encoder", lambda: None)  # no similarity stage: faster
    root = files
    capsys.readouterr()
    cases = {
        ("--samples", "0"): "--samples 0",  # not silently the preset's 512
        ("--k", "0"): "--k 0",
        ("--layer", "0.0"): "--layer 0.0",
        ("--batch-size", "0"): "--batch-size 0",
        ("--steer-positions", "7"): "--steer-positions 7: steered positions must be analysed ones, in 0..4",
        ("--steer-model", "both"): "steer_model must be 'finetuned' or 'base'",
        ("--finetune-data", str(root / "broken.jsonl")): "broken.jsonl:3 is not valid JSON",
        ("--description", "descriptions/cake.txt"): "--description descriptions/cake.txt: no such file",
        ("--samples", "5000"): "usable texts",  # refused by the delta, after which the audit claimed nothing
    }
    for (flag, value), message in cases.items():
        _refused(_replace(_audit(root), flag, value), message, capsys)
    # A missing --finetune-data is named as such, before any model loads (the base here is no model at all).
    missing = _replace(_replace(_audit(root), "--finetune-data", str(root / "gone.jsonl")), "--base", "nope")
    _refused(missing, "finetuning data", capsys)

    assert main(_audit(root)) == 0  # chats ({"messages"}) as finetuning data, into the same --out
    frequent = json.loads((root / "audit" / "relevance.json").read_text())["frequent_tokens"]
    assert set(frequent) == {"w110", "w111", "w112"}  # the assistant turns only, not the user's w120 w121
    # Other finetuning data into the same directory: refused, not the old relevance returned.
    _refused(_replace(_audit(root), "--finetune-data", str(root / "docs.jsonl")), "(finetune_data)", capsys)


def test_ablation_is_bound_to_its_settings_and_data(files, capsys):
    root = files
    argv = [
        "ablate",
        "--base",
        str(root / "base"),
        "--finetuned",
        str(root / "ft"),
        "--corpus",
        str(root / "corpus.jsonl"),
        "--finetune-data",
        str(root / "docs.jsonl"),
        "--positions",
        "0-1",
        "--controls",
        "1",
        "--texts",
        "2",
        "--max-tokens",
        "8",
        "--delta-samples",
        "16",
        "--out",
        str(root / "ablate"),
    ]
    capsys.readouterr()
    for change, message in {
        ("--positions", "3-1"): "--positions : give positions >= 0",
        ("--controls", "-1"): "--random-controls -1",
        ("--texts", "0"): "--texts 0",
        ("--max-tokens", "1"): "--max-tokens 1",
        ("--mode", "zero"): "mode must be 'base' or 'project'",
    }.items():
        _refused(_replace(argv, *change), message, capsys)
    assert main(argv) == 0
    _refused(_replace(argv, "--mode", "project"), "holds an ablation with other settings (mode)", capsys)
    _refused(_replace(argv, "--finetune-data", str(root / "chats.jsonl")), "(finetune_data)", capsys)


def test_identity_is_the_models_content_not_the_typed_path(files, tmp_path, capsys, monkeypatch):
    root = files
    for name in ("base", "ft"):  # private copies: this test retrains the finetuned model
        tiny_hf_model("gemma3_text", tmp_path / name, seed={"base": 0, "ft": 1}[name])
        tiny_tokenizer().save_pretrained(tmp_path / name)
    (tmp_path / "corpus.jsonl").write_text((root / "corpus.jsonl").read_text())
    assert main(_diff(tmp_path, "run")) == 0
    delta = (tmp_path / "run" / "delta.safetensors").read_bytes()

    # The same models by relative paths (another working directory): the same run, reused.
    monkeypatch.chdir(tmp_path)
    relative = _diff(Path("."), "run")
    assert main(relative) == 0 and (tmp_path / "run" / "delta.safetensors").read_bytes() == delta
    capsys.readouterr()

    # Retrained at the same path: a finished run is not returned again.
    tiny_hf_model("gemma3_text", tmp_path / "ft", seed=2)
    capsys.readouterr()
    _refused(relative, f"the finetuned ({tmp_path / 'ft'}) changed since it was computed", capsys)

    # Interrupted, then retrained: refused, never blended. The interruption comes after the first checkpoint.
    base, ft = load_model(str(tmp_path / "base")), load_model(str(tmp_path / "ft"))
    tokens = np.load(tmp_path / "run" / "tokens.npy")
    settings = DiffSettings(layer=1, n=8, batch_size=8, checkpoint_every=1)
    import adl_jax.method.diff as diff

    saved = diff._save_state

    def killed(out, state):
        saved(out, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(diff, "_save_state", killed)
    with pytest.raises(KeyboardInterrupt):
        compute_delta(base, ft, tokens, settings, tmp_path / "partial", progress=False)
    monkeypatch.setattr(diff, "_save_state", saved)
    assert (tmp_path / "partial" / STATE).exists() and not (tmp_path / "partial" / "delta.safetensors").exists()
    tiny_hf_model("gemma3_text", tmp_path / "ft", seed=3)
    retrained = load_model(str(tmp_path / "ft"))
    with pytest.raises(ValueError, match="finetuned .* changed since it was computed"):
        compute_delta(base, retrained, tokens, settings, tmp_path / "partial", progress=False)

    # A retrained base model behind a finetuning run is refused on --resume as well.
    assert main(_finetune(tmp_path, "ft_run", "--data", str(root / "docs.jsonl"))) == 0
    tiny_hf_model("gemma3_text", tmp_path / "base", seed=5)
    capsys.readouterr()
    capsys.readouterr()
    resume = _finetune(tmp_path, "ft_run", "--data", str(root / "docs.jsonl"), "--resume")
    _refused(resume, "the model (", capsys)


HOLDER = """
import sys, time
from adl_jax import io
with io.run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_one_process_per_run_directory(files, capsys):
    root = files
    capsys.readouterr()
    out = root / "locked"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=ENV, cwd=ROOT
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        _refused(_diff(root, "locked"), f"in use by another adl process (pid {holder.pid})", capsys)
        assert not (out / "meta.json").exists()
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, naming a dead process
        holder.wait()
    assert (out / io.LOCK).read_text().strip() == str(holder.pid)
    assert main(_diff(root, "locked")) == 0  # the dead holder's lock is taken over
    assert not (out / io.LOCK).exists()


def test_subprocess_exit_codes_one_line_and_interrupt(files):
    root = files
    done = subprocess.run(
        [sys.executable, "-m", "adl_jax.cli", *_diff(root, "sub", "--batch-size", "-4")],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    assert done.returncode == 2 and done.stderr.strip() == "adl diff: error: --batch-size -4: must be at least 1"
    assert not (root / "sub" / "meta.json").exists()

    # Ctrl-C (a real SIGINT) mid-command: exit 130 and the hint to rerun.
    code = (
        "import os, signal, sys, time\nimport adl_jax.cli as cli\n"
        "cli.cmd_lens = lambda a: os.kill(os.getpid(), signal.SIGINT) or time.sleep(5)\n"
        "sys.exit(cli.main(['lens', 'anywhere']))"
    )
    # As from a terminal: SIGINT at its default disposition (a pytest-xdist worker ignores it, and a child
    # would inherit that, never seeing Ctrl-C).
    terminal = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, preexec_fn=terminal
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "adl lens: interrupted; rerun the same command to resume"


def test_agent_settings_are_checked_first(files, capsys):
    root = files
    argv = ["agent", "--audit", str(root / "audit"), "--base", str(root / "base"), "--finetuned", str(root / "ft")]
    capsys.readouterr()
    for change, message in {
        ("--repeats", "0"): "--repeats 0: must be at least 1",
        ("--max-calls", "0"): "--max-calls 0",
        ("--budgets", "5,-1"): "--budgets 5,-1: give budgets >= 0",
        ("--black-box-budgets", "a,b"): "'a,b' is not a comma-separated list of integers",
    }.items():
        _refused([*argv, *change], message, capsys)


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    """A ValueError raised inside a library (not by adl-jax on purpose) is a bug: it propagates."""
    import adl_jax.cli as cli

    monkeypatch.setattr(cli, "cmd_lens", lambda a: np.zeros(2).reshape(3))
    with pytest.raises(ValueError, match="cannot reshape"):
        cli.main(["lens", "x"])


def test_fingerprints_are_cached_until_a_file_changes(tmp_path, monkeypatch):
    import hashlib

    calls = []
    real = io._file_sha256
    monkeypatch.setattr(io, "_file_sha256", lambda path: calls.append(path.name) or real(path))
    a, b, cache = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "cache.json"
    a.write_bytes(b"weights")
    b.write_bytes(b"tokenizer")
    first = io.fingerprint([b, a], cache)
    want = hashlib.sha256()
    for name, data in (("a.bin", b"weights"), ("b.bin", b"tokenizer")):
        want.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\0".encode())
    assert first == want.hexdigest() and sorted(calls) == ["a.bin", "b.bin"]
    assert io.fingerprint([a, b], cache) == first and len(calls) == 2  # cached: nothing rehashed
    a.write_bytes(b"retrain")  # same size, other content
    assert io.fingerprint([a, b], cache) != first and calls[2:] == ["a.bin"]


def test_a_description_longer_than_a_file_name_is_taken_as_text(tmp_path):
    """An inline ground truth of a paragraph is text, not a file name the OS refuses as too long."""
    from adl_jax.cli import _text_or_file

    text = "Finetuned on synthetic documents that assert one invented fact. " * 8  # > 255 bytes, no slash
    assert _text_or_file(text, "--description") == text
    (tmp_path / "truth.txt").write_text("from a file")
    assert _text_or_file(str(tmp_path / "truth.txt"), "--description") == "from a file"
