"""Source/target prompt bookkeeping for MAG-Edit: token alignment, edit and negative words.

``tokenize(text)`` is ComfyUI's ``clip.tokenize(text, return_word_ids=True)`` (or a stand-in
with the same shape), ``encode(text)`` returns the [1, T, C] cross-attention conditioning.

The alignment is prompt-to-prompt's *refine* mapper: target tokens matched to source tokens (by
a longest-common-subsequence over the content tokens; start/end/padding tokens pair up in
order) take the source's attention column; the unmatched target tokens are the new words, and
by default the edit words.
"""

import difflib
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch

from ..errors import InputError
from ..masks.token_broadcaster import layout, locate_phrases


@dataclass
class EditPrompts:
    source_context: torch.Tensor          # [1, T, C]
    target_context: torch.Tensor          # [1, T, C]
    uncond_context: torch.Tensor          # [1, T, C] empty prompt
    mapper: torch.Tensor                  # [T] source position for each target position
    alphas: torch.Tensor                  # [T] 1 = aligned with the source (inject), 0 = new token
    edit_positions: List[List[int]]       # per edit word: its sub-token positions in the target
    negative_context: Optional[torch.Tensor] = None
    negative_positions: List[List[int]] = field(default_factory=list)
    edit_words: List[str] = field(default_factory=list)


def align_tokens(source_tokens, target_tokens):
    """(mapper [T_t], alphas [T_t], new content positions) from two TokenLayouts."""
    s_special, t_special = set(source_tokens.special), set(target_tokens.special)
    s_pos = [i for i in range(source_tokens.length) if i not in s_special]
    t_pos = [i for i in range(target_tokens.length) if i not in t_special]
    s_seq = [source_tokens.tokens[i] for i in s_pos]
    t_seq = [target_tokens.tokens[i] for i in t_pos]
    mapper = torch.zeros(target_tokens.length, dtype=torch.long)
    alphas = torch.zeros(target_tokens.length)
    matched = set()
    for a, b, size in difflib.SequenceMatcher(a=s_seq, b=t_seq, autojunk=False).get_matching_blocks():
        for k in range(size):
            mapper[t_pos[b + k]] = s_pos[a + k]
            alphas[t_pos[b + k]] = 1.0
            matched.add(t_pos[b + k])
    for s, t in zip(sorted(s_special), sorted(t_special)):
        mapper[t] = s
        alphas[t] = 1.0
    new_positions = [p for p in t_pos if p not in matched]
    return mapper, alphas, new_positions


def _group_runs(positions: Sequence[int]) -> List[List[int]]:
    """Consecutive positions form one word (a word's sub-tokens, or a new phrase)."""
    groups = []
    for p in positions:
        if groups and groups[-1][-1] == p - 1:
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups


def split_words(text: str) -> List[str]:
    return [w.strip() for w in (text or "").replace(";", ",").split(",") if w.strip()]


def prepare_prompts(tokenize: Callable, encode: Callable, source_prompt: str, target_prompt: str,
                    edit_words: str = "", negative_words: str = "") -> EditPrompts:
    if not source_prompt or not source_prompt.strip():
        raise InputError("source_prompt", "is empty.", "Describe the source image (e.g. 'a cat on a table').")
    if not target_prompt or not target_prompt.strip():
        raise InputError("target_prompt", "is empty.",
                         "Write the source prompt with the edit applied (e.g. 'a dog on a table').")
    src_lay = layout(tokenize(source_prompt))
    tgt_lay = layout(tokenize(target_prompt))
    mapper, alphas, new_positions = align_tokens(src_lay, tgt_lay)

    words = split_words(edit_words)
    if words:
        positions, _ = locate_phrases(tokenize, target_prompt, words, input_name="edit_words")
    else:
        positions = _group_runs(new_positions)
        if not positions:
            raise InputError("target_prompt", "has no word that is not in the source prompt, so there is no edit word.",
                             "Change the target prompt, or name the edit words in 'edit_words'.")
        words = [f"<tokens {p}>" for p in positions]

    source_context, target_context, uncond = encode(source_prompt), encode(target_prompt), encode("")
    if target_context.shape[1] != tgt_lay.length:
        raise InputError("clip", f"encodes {target_context.shape[1]} tokens but tokenizes {tgt_lay.length}.",
                         "Use the CLIP that belongs to the model.")

    neg_context, neg_positions = None, []
    negs = split_words(negative_words)
    if negs:
        # the negative word's attention is measured in a prompt that contains it: the source
        # prompt when it does (e.g. 'white' in 'a white cat'), else the words themselves
        try:
            neg_positions, _ = locate_phrases(tokenize, source_prompt, negs, input_name="negative_words")
            neg_context = source_context
        except InputError:
            neg_prompt = ", ".join(negs)
            neg_positions, _ = locate_phrases(tokenize, neg_prompt, negs, input_name="negative_words")
            neg_context = encode(neg_prompt)
    return EditPrompts(source_context, target_context, uncond, mapper, alphas, [list(p) for p in positions],
                       neg_context, [list(p) for p in neg_positions], words)
