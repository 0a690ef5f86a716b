"""Token broadcaster on a tokenizer shaped like ComfyUI's (chunks of 77 with word ids)."""

import pytest

from contextedit.nodes.errors import InputError
from contextedit.nodes.masks.token_broadcaster import layout, locate_phrases

SOT, EOT = 49406, 49407


def fake_comfy_tokenize(text):
    """Like ComfyUI's SD1 tokenizer with return_word_ids=True: every word -> one token (its
    hash), '(word:1.2)' weights stripped, chunks of 75 content tokens framed by SOT/EOT and padded
    with EOT to 77; special tokens carry word id 0."""
    words = []
    for raw in text.replace("\n", " ").split(" "):
        w = raw.strip("();,.")
        if ":" in w:
            w = w.split(":")[0]
        if w:
            words.append(w.lower())
    tokens = [(abs(hash(w)) % 40000 + 100, 1.0, i + 1) for i, w in enumerate(words)]
    chunks = []
    for start in range(0, max(len(tokens), 1), 75):
        body = tokens[start:start + 75]
        chunk = [(SOT, 1.0, 0)] + body + [(EOT, 1.0, 0)]
        chunk += [(EOT, 1.0, 0)] * (77 - len(chunk))
        chunks.append(chunk)
    return {"l": chunks}


def test_positions_of_each_instruction():
    prompt = "make the hat red\nturn the dog into a cat"
    pos, lay = locate_phrases(fake_comfy_tokenize, prompt, ["make the hat red", "turn the dog into a cat"])
    assert pos == [[1, 2, 3, 4], [5, 6, 7, 8, 9, 10]]
    assert lay.length == 77 and lay.special == [0] + list(range(11, 77))


def test_repeated_phrases_take_successive_occurrences():
    prompt = "add a hat; add a hat"
    pos, _ = locate_phrases(fake_comfy_tokenize, prompt, ["add a hat", "add a hat"])
    assert pos == [[1, 2, 3], [4, 5, 6]]


def test_weights_syntax_and_multi_chunk_prompts():
    filler = " ".join(f"w{i}" for i in range(80))
    prompt = f"{filler} make the (hat:1.3) red"
    pos, lay = locate_phrases(fake_comfy_tokenize, prompt, ["make the hat red"])
    assert lay.length == 154
    # 80 filler words: 75 in chunk 0, 5 in chunk 1 (after its start token at 77)
    assert pos == [[77 + 1 + 5 + i for i in range(4)]]
    assert all(p not in lay.special for p in pos[0])


def test_a_phrase_across_the_chunk_boundary_is_found():
    filler = " ".join(f"w{i}" for i in range(73))
    pos, _ = locate_phrases(fake_comfy_tokenize, f"{filler} one two three four", ["one two three four"])
    assert pos == [[74, 75, 78, 79]]  # 74 and 75 in chunk 0, then chunk 1 after its start token


def test_errors_name_the_input():
    with pytest.raises(InputError) as e:
        locate_phrases(fake_comfy_tokenize, "make the hat red", ["paint the sky"])
    assert e.value.input_name == "prompt" and "paint the sky" in str(e.value)
    with pytest.raises(InputError, match="is empty"):
        locate_phrases(fake_comfy_tokenize, "   ", ["x"])
    with pytest.raises(InputError, match="instruction 2"):
        locate_phrases(fake_comfy_tokenize, "a b", ["a", " "], input_name="words")


def test_layout_prefers_the_l_stream_and_marks_specials():
    tok = {"g": [[(1, 1.0, 0), (2, 1.0, 1), (0, 1.0, 0)]], "l": [[(SOT, 1.0, 0), (7, 1.0, 1), (EOT, 1.0, 0)]]}
    lay = layout(tok)
    assert lay.tokens == [SOT, 7, EOT] and lay.special == [0, 2]
