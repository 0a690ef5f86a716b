"""Segment conditioning for the DiT confinement (nodes/attention/dit_conditioning.py).

The stand-in text encoder is bidirectional on purpose (every output token mixes the whole
sequence, as T5's self-attention does), so a span cut from a joint encoding differs from the
standalone encoding; the helper must return the standalone ones.
"""

import pytest
import torch
from contextedit.nodes.attention.dit_conditioning import encode_segments
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
