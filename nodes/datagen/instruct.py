"""Instruction rewrite and quality score of an editing pair, by the VLM looking at both images.

rewrite: a simple and a reasoning instruction (InsightEdit's instruction-recaption step) plus a
one-sentence caption of each image (what the region trainer reads as t_o / t_e).

score: VIEScore-style (Ku et al., 2024). The VLM answers two prompts (prompts.SC_PROMPT with both
images and the edit instruction, prompts.PQ_PROMPT with the edited one), each ``{"score": [a, b]}``.
As in VIEScore, ``SC = min(a_sc, b_sc)``, ``PQ = min(a_pq, b_pq)`` and the overall score is
``O = sqrt(SC * PQ)``. Which pairs are judged and with which instruction follows InsightEdit's
``5_evaluate.py`` by default (pipeline.Pipeline._score: forward pairs, the template instruction).

Two choices are ours, not InsightEdit's: the **0-10 scale** (VIEScore's own prompts; InsightEdit's
prompt_SC.txt / prompt_PQ.txt ask GPT-4o for 0-5) and the **threshold**: a pair is kept when
``O >= THRESHOLD`` (6.0: both the edit and the image quality rated clearly above the middle of the
scale). InsightEdit's released code stores the scores and applies no threshold.
"""

from __future__ import annotations

import math

from ..executability.lenient_json import find_values
from .annotate import UnreadableReply
from .prompts import PQ_PROMPT, REWRITE_PROMPT, SC_PROMPT

THRESHOLD = 6.0
REWRITE_MAX_NEW_TOKENS = 256
SCORE_MAX_NEW_TOKENS = 128
REWRITE_KEYS = ("simple_instruction", "reasoning_instruction", "source_caption", "target_caption")


def _answer(reply: str) -> str:
    return reply.rsplit("</think>", 1)[-1] if "</think>" in reply else reply


def parse_rewrite_reply(reply: str) -> dict:
    """The four rewrite fields, or UnreadableReply naming the missing ones."""
    best = {}
    for found in find_values(_answer(reply)):
        if isinstance(found.value, dict):
            lowered = {str(k).casefold(): v for k, v in found.value.items()}
            fields = {k: " ".join(lowered[k].split()) for k in REWRITE_KEYS
                      if isinstance(lowered.get(k), str) and lowered[k].strip()}
            if len(fields) > len(best):
                best = fields
    missing = [k for k in REWRITE_KEYS if k not in best]
    if missing:
        raise UnreadableReply("rewrite", f"the reply lacks {', '.join(missing)}.", reply)
    return best


def parse_score_reply(reply: str, stage: str = "score") -> tuple[list, str]:
    """([a, b] in 0..10, reasoning) from ``{"score": [a, b], "reasoning": ...}``."""
    for found in find_values(_answer(reply)):
        value = found.value
        if isinstance(value, dict):
            lowered = {str(k).casefold(): v for k, v in value.items()}
            scores = lowered.get("score", lowered.get("scores"))
            if (isinstance(scores, list) and len(scores) == 2 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    and 0 <= v <= 10 for v in scores)):
                reasoning = lowered.get("reasoning")
                return [float(v) for v in scores], reasoning if isinstance(reasoning, str) else ""
    raise UnreadableReply(stage, "the reply has no \"score\": [a, b] with two numbers in 0..10.", reply)


def overall(sc: list, pq: list) -> float:
    """VIEScore's O = sqrt(min(SC) * min(PQ))."""
    return math.sqrt(min(sc) * min(pq))


def _shifted(on_token, offset: int, total: int):
    """``on_token`` for one generate call of several sharing one progress total (VLM.generate's hook)."""
    if on_token is None:
        return None
    return lambda n, _max: on_token(offset + n, total)


def rewrite_pair(vlm, source, target, pair: dict, detail: str = "", should_stop=None, on_token=None) -> dict:
    """``should_stop`` / ``on_token``: VLM.generate's hooks (ComfyUI's interrupt check, progress)."""
    prompt = REWRITE_PROMPT.format(instruction=pair["instruction"][0], task_type=pair["task_type"],
                                   detail=detail or pair["task_type"])
    reply = vlm.generate([source, target], prompt, max_new_tokens=REWRITE_MAX_NEW_TOKENS,
                         should_stop=should_stop, on_token=on_token).text
    return dict(parse_rewrite_reply(reply), rewrite_reply=reply)


def score_pair(vlm, source, target, instruction: str, threshold: float = THRESHOLD, should_stop=None,
               on_token=None) -> dict:
    """Two VLM calls; ``on_token(done, total)`` counts over both (total = 2 * SCORE_MAX_NEW_TOKENS)."""
    total = 2 * SCORE_MAX_NEW_TOKENS
    sc_reply = vlm.generate([source, target], SC_PROMPT.replace("{instruction}", instruction),
                            max_new_tokens=SCORE_MAX_NEW_TOKENS, should_stop=should_stop,
                            on_token=_shifted(on_token, 0, total)).text
    sc, sc_reason = parse_score_reply(sc_reply)
    pq_reply = vlm.generate(target, PQ_PROMPT, max_new_tokens=SCORE_MAX_NEW_TOKENS, should_stop=should_stop,
                            on_token=_shifted(on_token, SCORE_MAX_NEW_TOKENS, total)).text
    pq, pq_reason = parse_score_reply(pq_reply)
    score = overall(sc, pq)
    return {"scores": {"SC": sc, "PQ": pq, "overall": score,
                       "reasoning": {"SC": sc_reason, "PQ": pq_reason}},
            "keep": score >= threshold}


def describe_pair(vlm, source, target, instruction: str, task_type: str = "replace", score: bool = True,
                  threshold: float = THRESHOLD, should_stop=None, on_token=None) -> dict:
    """Rewrite (and optionally score) one pair without ever failing on a reply: what the ComfyUI
    node shows. The judge checks the given (template) instruction, as the pipeline's default and
    InsightEdit's scorer do. An unreadable rewrite keeps ``instruction`` as the simple instruction
    and leaves the rest empty; an unreadable or skipped score gives ``overall = -1``. ``notes``
    says which. ``should_stop`` runs after every generated token (it may raise: ComfyUI's
    interrupt); ``on_token(done, total)`` reports progress over all the calls' token budgets."""
    if not isinstance(instruction, str) or not instruction.strip():
        from ..errors import InputError

        raise InputError("instruction", "is empty.", "Type the edit that turns the source into the edited image.")
    pair = {"instruction": [instruction.strip()], "task_type": task_type}
    notes = []
    total = REWRITE_MAX_NEW_TOKENS + (2 * SCORE_MAX_NEW_TOKENS if score else 0)
    try:
        fields = rewrite_pair(vlm, source, target, pair, should_stop=should_stop,
                              on_token=_shifted(on_token, 0, total))
    except UnreadableReply as error:
        fields = {"simple_instruction": instruction.strip(), "reasoning_instruction": "", "source_caption": "",
                  "target_caption": "", "rewrite_reply": error.reply}
        notes.append(f"could not read the rewrite reply ({error}); kept the given instruction")
    result = dict(fields, scores=None, keep=None, notes=notes)
    if on_token is not None:
        on_token(REWRITE_MAX_NEW_TOKENS, total)  # the rewrite's share is done, even if it stopped early
    if score:
        try:
            result.update(score_pair(vlm, source, target, instruction.strip(), threshold,
                                     should_stop=should_stop, on_token=_shifted(on_token, REWRITE_MAX_NEW_TOKENS,
                                                                                total)))
        except UnreadableReply as error:
            notes.append(f"could not read a score reply ({error})")
    if on_token is not None:
        on_token(total, total)
    return result


def pair_report(result: dict) -> str:
    lines = [f"simple: {result['simple_instruction']}", f"reasoning: {result['reasoning_instruction']}",
             f"source caption: {result['source_caption']}", f"target caption: {result['target_caption']}"]
    scores = result.get("scores")
    if scores:
        lines.append(f"VIEScore: SC {scores['SC']} PQ {scores['PQ']} overall {scores['overall']:.2f} "
                     f"({'kept' if result['keep'] else 'dropped'})")
    lines += [f"note: {note}" for note in result.get("notes", [])]
    return "\n".join(lines)
