"""Segment conditioning for the DiT confinement (nodes/attention/dit_conditioning.py).

The stand-in text encoder is bidirectional on purpose (every output token mixes the whole
sequence, as T5's self-attention does), so a span cut from a joint encoding differs from the
standalone encoding; the helper must return the standalone ones.
"""

import math

import pytest
import torch
from contextedit.nodes.attention.dit_conditioning import (
    encode_prefixed_segments,
    encode_segments,
)
from contextedit.nodes.errors import InputError


def bidirectional_encoder(width=6):
    """Token embedding by characters, then one full (bidirectional) mixing step; pooled = mean."""
    def encode(text):
        ids = torch.tensor([[ord(c) % 17 for c in text] + [3]], dtype=torch.float32)   # + an end token
        emb = torch.stack([torch.sin(ids * (j + 1)) for j in range(width)], dim=-1)
        mixed = emb + emb.mean(dim=1, keepdim=True)        # each token sees all the others
        return mixed, {"pooled_output": mixed.mean(dim=1), "marker": text}
    return encode


def test_each_part_is_its_standalone_encoding_and_spans_tile_the_context():
    enc = bidirectional_encoder()
    out = encode_segments(enc, ["make the hat red", "add a dog"], shared="a photo")
    parts = ["a photo", "", "make the hat red", "add a dog"]
    lengths = [len(p) + 1 for p in parts]
    assert out.segments.shared == ((0, lengths[0]),)
    starts = [sum(lengths[:i]) for i in range(4)]
    assert out.segments.segments == tuple((starts[i], starts[i] + lengths[i]) for i in range(1, 4))
    assert out.context.shape == (1, sum(lengths), 6)
    for text, (a, b) in zip(parts, [out.segments.shared[0], *out.segments.segments]):
        # the same deterministic function on the same input: bit-identical
        assert torch.equal(out.context[:, a:b], enc(text)[0])
    # a joint encoding would have leaked: its instruction-1 span differs from the standalone one
    joint = enc("a photo" + "make the hat red" + "add a dog")[0]
    a = len("a photo")
    assert not torch.equal(joint[:, a:a + len("make the hat red")], enc("make the hat red")[0][:, :-1])
    assert out.texts == parts[1:]


def test_global_vectors_come_from_the_shared_prompt_else_the_image_only_one():
    enc = bidirectional_encoder()
    with_shared = encode_segments(enc, ["make the hat red"], shared="a photo")
    assert with_shared.extras["marker"] == "a photo"
    assert torch.equal(with_shared.extras["pooled_output"], enc("a photo")[1]["pooled_output"])
    without = encode_segments(enc, ["make the hat red"], shared="  ")
    assert without.extras["marker"] == "" and without.segments.shared == ()
    # changing an instruction never changes the pooled vector
    other = encode_segments(enc, ["paint it blue"], shared="  ")
    assert torch.equal(without.extras["pooled_output"], other.extras["pooled_output"])


def test_bad_encoders_and_inputs_are_refused_clearly():
    enc = bidirectional_encoder()
    with pytest.raises(InputError, match="instruction"):
        encode_segments(enc, [])

    def masked(text):
        t, e = enc(text)
        m = torch.ones(1, t.shape[1])
        m[:, -1] = 0
        return t, {**e, "attention_mask": m}
    with pytest.raises(InputError, match="padding attention mask"):
        encode_segments(masked, ["x"])

    def all_ones(text):
        t, e = enc(text)
        return t, {**e, "attention_mask": torch.ones(1, t.shape[1])}
    assert "attention_mask" not in encode_segments(all_ones, ["x"]).extras

    widths = iter([6, 6, 5])
    with pytest.raises(InputError, match="wide"):
        encode_segments(lambda text: bidirectional_encoder(next(widths))(text), ["a", "b"])
    with pytest.raises(InputError, match=r"\[1, tokens, channels\]"):
        encode_segments(lambda text: torch.zeros(2, 3), ["a"])


def causal_picture_encoder(width=6, picture_rows=4, template=3):
    """A stand-in shaped like Qwen-Image-Edit's encoder: input = [template | picture marker | text |
    end]; the picture marker expands to ``picture_rows`` rows, the template rows are dropped from the
    output, and every row mixes only the rows before it (causal: cumulative mean)."""
    def encode(text):
        ids = list(range(100, 100 + template)) + ["IMG"] + [ord(c) % 17 for c in text] + [3]
        rows = []
        for t in ids:
            n = picture_rows if t == "IMG" else 1
            base = 5.0 if t == "IMG" else float(t)
            rows += [[math.sin(base * (j + 1) + r) for j in range(width)] for r in range(n)]
        emb = torch.tensor([rows], dtype=torch.float32)
        mixed = emb.cumsum(dim=1) / torch.arange(1, emb.shape[1] + 1).view(1, -1, 1)
        return mixed[:, template:], {"pooled_output": None, "marker": text}, ids
    return encode


def test_prefixed_segments_share_the_picture_rows_and_keep_their_standalone_positions():
    enc = causal_picture_encoder()
    out = encode_prefixed_segments(enc, ["make the hat red", "add a dog"])
    n_p = 4                                     # the picture's rows (the template rows are dropped)
    texts = ["", "make the hat red", "add a dog"]
    lengths = [len(t) + 1 for t in texts]       # the text's characters + the end token
    assert out.segments.shared == ((0, n_p),)
    starts = [n_p + sum(lengths[:i]) for i in range(3)]
    assert out.segments.segments == tuple((starts[i], starts[i] + lengths[i]) for i in range(3))
    assert out.segments.offsets == (n_p, n_p, n_p)
    standalone = [enc(t)[0] for t in texts]
    # the same deterministic function on the same input: bit-identical parts
    assert torch.equal(out.context[:, :n_p], standalone[0][:, :n_p])
    for full, (a, b) in zip(standalone, out.segments.segments):
        assert torch.equal(out.context[:, a:b], full[:, n_p:])
    # standalone positions: segment k's tokens sit after the picture, as in [P | S_k]
    pos = out.segments.position_in_segment()
    for (a, b) in out.segments.segments:
        assert pos[a:b].tolist() == list(range(n_p, n_p + b - a))
    assert out.extras["marker"] == "" and out.texts == texts


def test_prefixed_segments_refuse_encoders_without_one_shared_prefix():
    enc = causal_picture_encoder()

    def uneven(text):          # one text's rows do not follow its input tokens one to one
        t, e, ids = enc(text)
        return (t[:, 1:] if text else t), e, ids
    with pytest.raises(InputError, match="prefix"):
        encode_prefixed_segments(uneven, ["make the hat red"])
    with pytest.raises(InputError, match="instruction"):
        encode_prefixed_segments(enc, [])
