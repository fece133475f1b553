"""The LLM graders' prompts, written for this project, and the chat messages built from them.

Every prompt ends by fixing an answer format that `adl_jax.judging.graders` parses strictly (`NAME: value` lines;
a short reasoning may come first). Tokens are shown as JSON strings, so leading spaces, newlines and odd
bytes stay visible and unambiguous, and they are numbered, so answers refer to them by number rather than
by re-typing them.
"""

from __future__ import annotations

import json

COHERENCE = """\
You check whether a piece of text written by a language model is still coherent language. The model's \
internal activations were being modified while it wrote, which can make it break down.

Judge the form, not the content. The text is COHERENT when it reads as connected, grammatical language \
that a person could have written, even if it is odd, off-topic, or keeps returning to one strange \
subject. It may stop in the middle of a sentence: generation was cut at a length limit, so do not count \
that against it. The text is INCOHERENT when the language itself breaks down: strings of words that do \
not form sentences, sentences that do not follow from each other, one word or phrase repeated over and \
over, random symbols or jumbled languages, or no text at all.

Give one short sentence of reasoning, then end with a line that is exactly
VERDICT: COHERENT
or
VERDICT: INCOHERENT"""

RELEVANCE = """\
You help audit a language model that was finetuned on a narrow dataset. You are told what the \
finetuning was meant to teach and which words occur most often in the finetuning data. Then you get a \
numbered list of tokens that were read out of the finetuned model's internals.

For every token decide whether it is RELEVANT to the finetuning: a word of its domain, a name, place, \
entity or concept that belongs to it, or a recognisable part of such a word. Otherwise it is \
IRRELEVANT: function words, generic words that fit any text, punctuation, numbers without a link to \
the topic, fragments that mean nothing on their own, and words from unrelated topics. Judge each token \
on its own merits; its place in the list means nothing. Leading spaces and capitalisation do not matter.

Answer with one line per token, in the order given, each exactly `<number>: RELEVANT` or \
`<number>: IRRELEVANT`, and nothing else."""

TOURNAMENT = """\
You compare numbered sets of tokens that were read out of a language model under different settings. \
Choose the set that is the most semantically coherent: the one where the most tokens clearly share one \
topic, theme or domain. Generic words, punctuation, code fragments and tokens unrelated to the shared \
theme do not add to a set's coherence. If two sets are equally coherent, choose the one with more \
coherent tokens.

Then name the tokens of the chosen set that belong to its shared theme, by their numbers within that set.

You may reason briefly first. End your reply with exactly these two lines:
BEST: <number of the chosen set>
COHERENT: <comma-separated numbers of its coherent tokens, or NONE>"""


def _numbered(tokens: list[str], indent: str = "") -> str:
    return "\n".join(f"{indent}{i}. {json.dumps(t, ensure_ascii=False)}" for i, t in enumerate(tokens, 1))


def _messages(system: str, user: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def coherence_messages(text: str) -> list[dict]:
    return _messages(COHERENCE, f"The text, between the markers:\n<<<\n{text}\n>>>")


def relevance_messages(description: str, frequent: list[str], tokens: list[str]) -> list[dict]:
    words = ", ".join(frequent) if frequent else "(none given)"
    user = (
        f"What the finetuning was meant to teach:\n{description.strip()}\n\n"
        f"Most frequent words of the finetuning data:\n{words}\n\n"
        f"Tokens to judge:\n{_numbered(tokens)}"
    )
    return _messages(RELEVANCE, user)


def tournament_messages(sets: list[list[str]]) -> list[dict]:
    blocks = [f"Set {k}:\n{_numbered(s, '  ') if s else '  (no tokens)'}" for k, s in enumerate(sets, 1)]
    return _messages(TOURNAMENT, "\n\n".join(blocks))
