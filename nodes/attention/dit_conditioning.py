"""Segment conditioning for the DiT confinement: each text part encoded on its own, then joined.

FLUX.1's T5 is bidirectional: a span cut out of one joint encoding of "instruction 1, instruction 2"
already carries the other instruction, so confinement by spans would leak. Here the shared prompt
(optional), the image-only segment (the empty instruction) and every instruction are encoded
*separately* with the model's own text encoder and concatenated along the token axis as
``[shared | image-only | instruction 1 | ... | instruction K]``; the spans are recorded for the
attention patch (:class:`~...attention_patches.joint_attention.TextSegments`).

The global vectors of the conditioning (FLUX.1's pooled CLIP-L vector, which modulates *every*
token) are taken from the shared prompt's encoding, or from the image-only one when there is no
shared prompt: a pooled vector that followed the instructions would move the whole image (on the
tiny test models it made the confinement worthless: outside-mask change 1.0x of unpatched).

Qwen-Image-Edit (:func:`encode_prefixed_segments`): the text encoder also reads the picture, and
every segment is encoded as ``[picture prefix + segment text]``. The Qwen2.5-VL encoder is causal,
so the rows of the prefix do not depend on the text after it: the prefix rows P are taken once
(from the image-only encoding) as the shared part, and each segment keeps only the rows after the
prefix; its standalone sequence is ``[P | S_k]``, recorded as the segment's position offset.

Free of ComfyUI imports: the node passes ``encode(text) -> (tokens [1, T, C], extras dict)``
(plus the input token ids for the prefixed form).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...attention_patches.joint_attention import TextSegments
from ..errors import InputError


@dataclass
class SegmentConditioning:
    context: torch.Tensor        # [1, T, C]: shared | image-only | instruction 1..K
    extras: dict                 # pooled_output etc. of the shared (else image-only) encoding
    segments: TextSegments       # where each part sits in ``context``
    texts: list                  # the texts encoded: [image-only "", instruction 1, ..., K]
    shared_text: str = ""


def encode_segments(encode: Callable, instructions: list, shared: str = "", empty: str = "") -> SegmentConditioning:
    """Encode ``shared`` (skipped when blank), the image-only text ``empty`` and each instruction
    on its own and join them. ``encode(text)`` returns ``(tokens [1, T, C], extras)``."""
    if not instructions:
        raise InputError("prompt", "has no instruction to confine.", "Write at least one edit instruction.")
    parts, spans, start = [], [], 0
    shared_span = ()
    shared_extras = None
    if shared and shared.strip():
        tokens, shared_extras = _encode(encode, shared.strip(), "the shared prompt")
        parts.append(tokens)
        shared_span = ((0, tokens.shape[1]),)
        start = tokens.shape[1]
    texts = [empty] + [t.strip() for t in instructions]
    empty_extras = None
    for i, text in enumerate(texts):
        tokens, extras = _encode(encode, text, "the image-only (empty) prompt" if i == 0 else f"instruction {i}")
        if i == 0:
            empty_extras = extras
        if parts and tokens.shape[-1] != parts[0].shape[-1]:
            raise InputError("clip", f"encoded {text!r} to {tokens.shape[-1]}-wide features, not {parts[0].shape[-1]}.",
                             "Use one text encoder for every segment.")
        parts.append(tokens)
        spans.append((start, start + tokens.shape[1]))
        start += tokens.shape[1]
    extras = dict(shared_extras if shared_extras is not None else empty_extras)
    return SegmentConditioning(torch.cat(parts, dim=1), extras,
                               TextSegments(tuple(spans), shared_span, start), texts, shared.strip() if shared else "")


def encode_prefixed_segments(encode: Callable, instructions: list, empty: str = "") -> SegmentConditioning:
    """Encode the image-only text ``empty`` and each instruction after a shared prefix (the
    picture) and split off that prefix. ``encode(text)`` returns ``(tokens [1, T, C], extras, ids)``
    where ``ids`` are the encoder's input tokens (any comparable items, one per input token).

    The prefix is the longest run of input tokens every text starts with; the encoder must map each
    input token after it to exactly one output row (true for Qwen-Image's encoder: the picture's
    tokens and the dropped system template lie before it), so with ``n`` input tokens after the
    prefix the prefix holds ``T - n`` output rows. This count must be the same for every text.
    Layout ``[P | S0 | S1 | ... | SK]`` with P the image-only encoding's prefix rows; each S_k
    has position offset ``len(P)``. Global vectors come from the image-only encoding."""
    if not instructions:
        raise InputError("prompt", "has no instruction to confine.", "Write at least one edit instruction.")
    texts = [empty] + [t.strip() for t in instructions]
    encoded = []
    for i, text in enumerate(texts):
        what = "the image-only (empty) prompt" if i == 0 else f"instruction {i}"
        out = encode(text)
        if not isinstance(out, tuple) or len(out) != 3:
            raise TypeError("encode(text) must return (tokens, extras, input ids) for prefixed segments")
        tokens, extras = _checked(out[0], out[1], what)
        encoded.append((tokens, extras, list(out[2])))
    ids = [e[2] for e in encoded]
    common = 0
    while all(len(x) > common for x in ids) and all(x[common] == ids[0][common] for x in ids[1:]):
        common += 1
    prefix_rows = {e[0].shape[1] - (len(e[2]) - common) for e in encoded}
    if len(prefix_rows) != 1 or min(prefix_rows) <= 0:
        raise InputError("clip", f"encoded the texts with picture prefixes of {sorted(prefix_rows)} rows (expected one "
                         "shared, non-empty prefix).",
                         "Use the Qwen-Image text encoder (CLIPLoader type qwen_image, Qwen2.5-VL) with an image.")
    n_prefix = prefix_rows.pop()
    width = encoded[0][0].shape[-1]
    parts, spans, start = [encoded[0][0][:, :n_prefix]], [], n_prefix
    for text, (tokens, _extras, _ids) in zip(texts, encoded):
        if tokens.shape[-1] != width:
            raise InputError("clip", f"encoded {text!r} to {tokens.shape[-1]}-wide features, not {width}.",
                             "Use one text encoder for every segment.")
        rest = tokens[:, n_prefix:]
        parts.append(rest)
        spans.append((start, start + rest.shape[1]))
        start += rest.shape[1]
    segments = TextSegments(tuple(spans), ((0, n_prefix),), start, (n_prefix,) * len(spans))
    return SegmentConditioning(torch.cat(parts, dim=1), dict(encoded[0][1]), segments, texts)


def _encode(encode, text, what):
    out = encode(text)
    tokens, extras = out if isinstance(out, tuple) else (out, {})
    return _checked(tokens, extras, what)


def _checked(tokens, extras, what):
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3 or tokens.shape[0] != 1 or tokens.shape[1] == 0:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise InputError("clip", f"encoded {what} to {shape}, expected [1, tokens, channels].",
                         "Connect the CLIP output of the model's text encoder loader.")
    extras = dict(extras or {})
    if extras.get("attention_mask") is not None and bool(extras["attention_mask"].all()):
        extras.pop("attention_mask")   # an all-ones mask masks nothing
    if extras.get("attention_mask") is not None:
        # a padding mask would have to be joined per segment and the confined attention takes no
        # mask; FLUX.1 and Qwen-Image encode unpadded text without one
        raise InputError("clip", f"returned a padding attention mask with its encoding of {what}.",
                         "Use the CLIP of a FLUX.1 or Qwen-Image checkpoint (their encodings carry no mask).")
    return tokens, extras
