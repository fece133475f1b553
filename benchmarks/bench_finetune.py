"""Finetuning throughput on Gemma-3-270M: our `finetune.train.train_step` vs transformers + peft, in one run.

Both sides take the same optimizer steps on the same batches (consecutive 128-token windows of the
false-fact organism `orange_carrot`'s documents, every token after the first a target), float32, AdamW (no weight decay, constant lr), global-norm
gradient clipping at 1.0. LoRA mode: the same rank, alpha and targets (all seven projections by
default), no dropout; full mode: every weight trained. Ours is set up the way `finetune.train.train`
does it (`_initial_state` on a one-device mesh, then the module-level jitted `train_step`); theirs is
`peft.get_peft_model` on the GGUF loaded by transformers, forward with labels, backward, clip, step.
Each side trains in blocks of `--warmup` untimed then `--steps` timed consecutive steps, as a training
loop does, and the blocks alternate for `--rounds` rounds so that contention on a shared machine hits
both alike; tokens/s is batch x seq over the median timed step. (Alternating single steps measures
something else: our step right after a torch step took a second longer, a cost no training run pays.)
PEFT's adapters start from ours (A random, B = 0), so the losses should agree step by step (to float32
noise, which Adam amplifies a little). Last, our step's FLOPs (XLA's count) against the matmul peak.

The header names the CPU, its cores and load average and the f32 matmul rate measured here, so that a ratio is
read against its machine (the load average again at the end: other processes on shared cores slow both sides).

`--data documents` measures what a run trains instead: tokens of real document content per second (padding
excluded). Ours trains on the documents packed into full rows (`build_splits(pack=True)`, the default of
`adl finetune`); theirs, as a transformers training loop usually does, on one document a row, truncated to
`--seq` and padded to the longest row of the batch. The batches then differ, so the losses are not compared.

    python -m benchmarks.bench_finetune [--mode lora|full] [--data windows|documents] [--batch 4] [--seq 128]
        [--steps 4] [--warmup 2] [--rounds 2] [--profile DIR]
"""

import argparse
import dataclasses
import os
import platform
import statistics
import time

import jax
import numpy as np
import torch

from adl_jax.models.params import param_shardings
from adl_jax.sharding import Rules, batch_sharding, make_mesh
from benchmarks.common import compiled_flops, load_pair, matmul_peak
from finetune.data import batch_at, build_splits
from finetune.lora import LoraConfig
from finetune.organisms import ORGANISMS
from finetune.peft_format import peft_tensors
from finetune.train import TrainConfig, _initial_state, make_optimizer, train_step

HF_NAMES = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("lora", "full"), default="lora")
    ap.add_argument("--data", choices=("windows", "documents"), default="windows")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per side and round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side and round, before the timed ones")
    ap.add_argument("--rounds", type=int, default=2, help="blocks per side, alternating")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--targets", default="q,k,v,o,gate,up,down")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (XLA uses every core)")
    ap.add_argument(
        "--profile", metavar="DIR", help="instead: trace our steps with jax.profiler into DIR and sum XLA's ops by name"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, T, block = args.batch, args.seq, args.warmup + args.steps
    total = args.rounds * block
    peak = matmul_peak()
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start; "
        f"f32 matmul {peak / 1e9:.1f} GFLOP/s (XLA, 2048 x 2048)"
    )
    ours, theirs = load_pair()
    cfg = ours.cfg

    docs = ORGANISMS["orange_carrot"].generate(400, 0)
    if args.data == "windows":
        ids = ours.tokenizer("\n\n".join(d["text"] for d in docs))["input_ids"]
        if len(ids) < total * B * T:
            raise SystemExit(f"the organism's documents have {len(ids)} tokens; fewer steps, rows or tokens needed")
        windows = np.asarray(ids[: total * B * T], np.int32).reshape(total * B, T)
        targets = np.ones((B, T), bool)
        targets[:, 0] = False  # like `encode_document`: the first token is no target
        ours_rows = [(windows[s * B : (s + 1) * B], np.ones((B, T), np.int32), targets) for s in range(total)]
        their_rows = [(w, np.ones((B, T), bool), targets) for w, _, _ in ours_rows]
    else:
        ours_rows, their_rows = document_batches(docs, ours.tokenizer, B, T, total)
    real = {
        "ours": [int((segments > 0).sum()) for _, segments, _ in ours_rows],
        "theirs": [int(valid.sum()) for _, valid, _ in their_rows],
    }

    # Ours, set up as `train` does. steps=1e9 with linear decay: a constant lr like torch's, to ~1e-8.
    targets_ours = tuple(args.targets.split(","))
    lora = LoraConfig(rank=args.rank, alpha=args.alpha, dropout=0.0, targets=targets_ours)
    tc = TrainConfig(
        steps=10**9,
        batch_size=B,
        seq_len=T,
        lr=args.lr,
        warmup=0,
        schedule="linear",
        weight_decay=0.0,
        grad_clip=1.0,
        mode=args.mode,
        lora=lora,
    )
    mesh = make_mesh(devices=jax.local_devices()[:1])
    base = jax.device_put(ours.params, param_shardings(cfg, mesh, Rules()))
    state = _initial_state(base, cfg, tc, make_optimizer(tc), mesh, Rules())
    put = lambda x: jax.device_put(x, batch_sharding(mesh, x.ndim, Rules()))

    def ours_step(step):
        nonlocal state
        arrays = tuple(put(a) for a in ours_rows[step])
        trainable, opt_state, out = train_step(*state, base, arrays, step, cfg=cfg, tc=tc)
        state = (trainable, opt_state)
        return float(out["loss"])  # waits for the step

    if args.profile:
        return profile(ours_step, args.profile, steps=args.steps, warmup=args.warmup)

    # Theirs: transformers + peft, the same settings.
    if args.mode == "lora":
        import peft

        pcfg = peft.LoraConfig(
            r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=[HF_NAMES[t] for t in targets_ours]
        )
        theirs = peft.get_peft_model(theirs, pcfg)
        # Our initial adapters (A random, B = 0) in PEFT's modules, so both sides train the same weights.
        ours_init = {k: torch.tensor(v) for k, v in peft_tensors(state[0], cfg).items()}
        assert not peft.set_peft_model_state_dict(theirs, ours_init).unexpected_keys
    theirs.train()
    params = [p for p in theirs.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    inputs = [
        {
            "input_ids": torch.tensor(tokens, dtype=torch.long),
            "attention_mask": torch.tensor(valid, dtype=torch.long),
            "labels": torch.tensor(np.where(targets, tokens, -100), dtype=torch.long),
        }
        for tokens, valid, targets in their_rows
    ]

    def theirs_step(step):
        opt.zero_grad(set_to_none=True)
        loss = theirs(**inputs[step]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    losses = {"ours": [], "theirs": []}
    times = {"ours": [], "theirs": []}
    counted = {"ours": 0, "theirs": 0}  # real tokens of the timed steps
    for start in range(0, total, block):
        for name, fn in (("ours", ours_step), ("theirs", theirs_step)):
            for step in range(start, start + block):
                t = time.perf_counter()
                losses[name].append(fn(step))
                if step - start >= args.warmup:
                    times[name].append(time.perf_counter() - t)
                    counted[name] += real[name][step]

    n_ours = sum(x.size for x in jax.tree.leaves(state[0]))
    n_theirs = sum(p.numel() for p in params)
    med = {k: statistics.median(v) for k, v in times.items()}
    tok = B * T
    print(
        f"Gemma-3-270M on {jax.devices()[0].platform}, {args.mode} finetuning, batch {B} x {T} tokens, float32, "
        f"AdamW lr {args.lr:g}, clip 1.0"
        + (f", LoRA r={args.rank} alpha={args.alpha:g} on {args.targets}" if args.mode == "lora" else "")
    )
    print(
        f"trainable parameters: ours {n_ours:,}  theirs {n_theirs:,};  torch threads {torch.get_num_threads()}, "
        f"attention {theirs.config._attn_implementation}"
    )
    print(f"{'':<22}{'s/step (median)':>16}{'tokens/s':>10}   timed steps (s)")
    for name, label in (
        ("ours", "ours (JAX + optax)"),
        ("theirs", "transformers + peft" if args.mode == "lora" else "transformers"),
    ):
        print(f"{label:<22}{med[name]:>16.2f}{tok / med[name]:>10.1f}   " + " ".join(f"{t:.2f}" for t in times[name]))
    print(f"ratio (theirs s/step / ours s/step): {med['theirs'] / med['ours']:.2f}x")
    rate = {k: counted[k] / sum(times[k]) for k in times}
    print(
        f"real tokens/s (padding excluded, all timed steps): ours {rate['ours']:.1f}  theirs {rate['theirs']:.1f}  "
        f"ratio {rate['ours'] / rate['theirs']:.2f}x"
    )
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if args.data == "windows":
        print_losses(losses)

    # Where our time goes: XLA's FLOP count of the step against this machine's matmul peak; the tied
    # 262k-token head dominates both sides.
    arrays = tuple(put(a) for a in ours_rows[0])
    unrolled = dataclasses.replace(cfg, scan_layers=False)  # XLA's cost analysis counts a loop body once
    flops = compiled_flops(train_step, *state, base, arrays, 0, cfg=unrolled, tc=tc)
    print(
        f"ours: {flops / 1e9:.0f} GFLOP a step, {flops / med['ours'] / 1e9:.1f} GFLOP/s = "
        f"{100 * flops / med['ours'] / peak:.0f}% of the measured f32 matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    head = 2 * 2 * B * T * cfg.vocab_size * cfg.hidden_size
    print(
        f"the output head forward and backward is {head / 1e9:.0f} GFLOP, in the tiled loss's loop, whose body XLA's "
        "count includes once, not once per tile (so both figures above are low)"
    )


def profile(step_fn, out: str, steps: int, warmup: int, top: int = 20) -> None:
    """Trace `steps` of our steps (after `warmup` untimed ones) with jax.profiler's perfetto trace and print
    XLA's ops (fusions, custom calls, copies) summed by name over the traced steps, largest first."""
    import glob
    import gzip
    import json
    from collections import Counter

    for step in range(warmup):
        step_fn(step)
    with jax.profiler.trace(out, create_perfetto_trace=True):
        t = time.perf_counter()
        for step in range(warmup, warmup + steps):
            step_fn(step)
        wall = time.perf_counter() - t
    (path,) = sorted(glob.glob(f"{out}/**/perfetto_trace.json.gz", recursive=True))[-1:]
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    ops = Counter()
    for e in events:  # XLA's own ops on its worker threads, not the executor's wrappers around them
        thread = threads.get((e.get("pid"), e.get("tid")), "")
        wrapper = "ThunkExecutor" in e.get("name", "") or "Await" in e.get("name", "")
        if e.get("ph") == "X" and "dur" in e and "XLA" in thread and not wrapper:
            ops[e["name"]] += e["dur"]
    busy = sum(ops.values())
    print(f"{steps} traced steps, {wall:.2f} s wall; XLA ops {busy / 1e6:.2f} s, summed over threads (ynn_fusion:")
    print("an XNNPACK fusion, mostly a dot; the optimized HLO, e.g. from jax.jit(...).lower(...).compile().as_text(),")
    print("names each fusion's op)")
    for name, us in ops.most_common(top):
        print(f"  {us / 1e3 / steps:9.1f} ms/step  {100 * us / busy:5.1f}%  {name}")


def cpu_model() -> str:
    """The CPU's marketing name (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def print_losses(losses):
    print(
        f"step-1 loss: ours {losses['ours'][0]:.5f}  theirs {losses['theirs'][0]:.5f}  "
        f"(|diff| {abs(losses['ours'][0] - losses['theirs'][0]):.2e})"
    )
    print("losses by step: ours " + " ".join(f"{x:.4f}" for x in losses["ours"]))
    print("                theirs " + " ".join(f"{x:.4f}" for x in losses["theirs"]))


def document_batches(docs, tokenizer, rows: int, length: int, steps: int):
    """(ours, theirs): per step (tokens, segments or validity, targets). Ours: the documents packed into
    full rows, drawn as training draws them; theirs: `rows` documents a step in the same seeded order,
    each truncated to `length` and padded to the batch's longest."""
    packed = build_splits(docs, tokenizer, length, eval_fraction=0.0, pack=True).train
    ours = [(r.tokens, r.segments, r.targets) for r in (batch_at(packed, s * rows, rows, 0) for s in range(steps))]
    padded = build_splits(docs, tokenizer, length, eval_fraction=0.0).train
    theirs = []
    for s in range(steps):
        r = batch_at(padded, s * rows, rows, 0)
        width = int(r.valid.sum(axis=1).max())
        theirs.append((r.tokens[:, :width], r.valid[:, :width], r.targets[:, :width]))
    return ours, theirs


if __name__ == "__main__":
    main()
