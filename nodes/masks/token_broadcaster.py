"""Token broadcaster: which positions of the diffusion prompt belong to which instruction.

CAMILA learns this map (S_ij = cos(O_i W_O, c_Tj W_T)); with a zero-shot pipeline we know the
instructions' text, so we locate each instruction's tokens in the prompt exactly as the model's
own tokenizer splits it. The tokenizer is ComfyUI's: ``clip.tokenize(text, return_word_ids=True)``
returns ``{"l": [chunk, ...]}`` (SD1; SDXL adds "g"), each chunk a list of ``(token, weight,
word_id)`` of length 77 with start/end/padding tokens carrying word_id 0. Long prompts are several
chunks, concatenated along the token axis by the encoder, so position = chunk * 77 + index.

Locating by token sequence (not by characters) keeps weights syntax "(red car:1.2)", embeddings
and chunk boundaries out of the way: CLIP's BPE splits words independently of their
neighbours, so an instruction tokenized alone yields the same tokens it has inside the prompt.
"""

from dataclasses import dataclass
from typing import Callable, List, Sequence

from ..errors import InputError


@dataclass
class TokenLayout:
    tokens: list          # hashable token ids, flattened over chunks
    special: list         # positions of start/end/padding tokens (word_id 0)
    length: int           # total positions (chunks * chunk length)


def _key(token):
    if isinstance(token, int):
        return token
    try:
        return int(token)
    except (TypeError, ValueError):
        return ("obj", id(token))  # textual-inversion embeddings arrive as tensors


def _pick_stream(tokenized):
    if isinstance(tokenized, dict):
        if "l" in tokenized:
            return tokenized["l"]
        return tokenized[sorted(tokenized)[0]]
    return tokenized


def clip_tokenizer(clip) -> Callable:
    """``tokenize(text)`` with word ids, from a ComfyUI CLIP object (duck-typed, no comfy import)."""
    return lambda text: clip.tokenize(text, return_word_ids=True)


def clip_encoder(clip) -> Callable:
    """``encode(text) -> [1, T, C]`` cross-attention conditioning, as CLIPTextEncode computes it."""
    return lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text), show_pbar=False)[0][0]


def layout(tokenized) -> TokenLayout:
    chunks = _pick_stream(tokenized)
    tokens, special = [], []
    pos = 0
    for chunk in chunks:
        for item in chunk:
            tok, word_id = item[0], (item[2] if len(item) > 2 else None)
            tokens.append(_key(tok))
            if word_id == 0:
                special.append(pos)
            pos += 1
    return TokenLayout(tokens, special, pos)


def content_tokens(tokenized) -> list:
    lay = layout(tokenized)
    special = set(lay.special)
    return [t for i, t in enumerate(lay.tokens) if i not in special]


def _find_all(haystack: Sequence, needle: Sequence, allowed: Sequence[int]) -> List[int]:
    """Start indices (into ``allowed``) where needle occurs in haystack restricted to ``allowed``."""
    seq = [haystack[i] for i in allowed]
    n = len(needle)
    return [i for i in range(len(seq) - n + 1) if seq[i:i + n] == list(needle)]


def locate_phrases(tokenize: Callable, prompt: str, phrases: Sequence[str], input_name: str = "prompt"):
    """Token positions of each phrase in the prompt.

    Returns (positions per phrase, TokenLayout of the prompt). Repeated phrases take successive
    occurrences; a phrase that cannot be found raises an InputError naming it.
    """
    if not prompt or not prompt.strip():
        raise InputError(input_name, "is empty.", "Write the edit instruction(s) the masks belong to.")
    lay = layout(tokenize(prompt))
    special = set(lay.special)
    content_pos = [i for i in range(lay.length) if i not in special]
    claimed = set()
    result = []
    for k, phrase in enumerate(phrases):
        if not phrase or not phrase.strip():
            raise InputError(input_name, f"instruction {k + 1} is empty.", "Remove the empty line or give it text.")
        needle = content_tokens(tokenize(phrase))
        if not needle:
            raise InputError(input_name, f"instruction {k + 1} ('{phrase}') has no tokens.",
                             "Give it at least one word.")
        starts = _find_all(lay.tokens, needle, content_pos)
        chosen = None
        for s in starts:
            span = content_pos[s:s + len(needle)]
            if not claimed.intersection(span):
                chosen = span
                break
        if chosen is None:
            raise InputError(input_name, f"the phrase '{phrase}' does not occur in the prompt '{prompt}'.",
                             "Use text that appears verbatim in the prompt (same words and spelling).")
        claimed.update(chosen)
        result.append(chosen)
    return result, lay
