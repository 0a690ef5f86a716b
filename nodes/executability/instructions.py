"""Split a multi-instruction prompt into single instructions.

Conservative on purpose: a wrong split sends half an instruction to the model, a missed split
only makes one instruction longer. We split, outside quotes only, at

* line breaks and ``;``,
* ``and then`` (with an optional comma before it),
* sentence ends: ``.``, ``!`` or ``?`` followed by a space and a capital letter, unless the word
  before the stop is an abbreviation (``e.g.``, ``Mr.``, ``St.`` ...), a single letter (an
  initial) or a number (``version 2.`` / a list marker),
* inline numbered lists that start at ``1.`` / ``1)`` and count up (``1. a 2. b 3) c``).

Each piece loses its list marker (``1.``, ``2)``, ``(3)``, ``-``, ``*``, ``•``), surrounding
whitespace and a trailing comma; everything else is kept verbatim. Pieces with no letter or
digit are dropped. Quotes: ``"..."``, ``“...”``, ``‘...’`` and ``'...'`` when the ``'`` opens at
a word start and closes before a non-letter (so apostrophes as in "don't" never count); an
unmatched quote character is ordinary text.
"""

from __future__ import annotations

import re
from typing import List

from ..errors import InputError

_ABBREVIATIONS = {
    "e.g", "i.e", "etc", "mr", "mrs", "ms", "dr", "st", "vs", "no", "approx", "jr", "sr", "mt",
    "fig", "cf", "ca",
}
_LIST_MARKER = re.compile(r"^\s*(?:\(?\d{1,3}[.)]|[-*\u2022\u2013])\s+")
_INLINE_NUMBER = re.compile(r"(?:^|(?<=\s))\(?(\d{1,3})[.)](?=\s)")
_AND_THEN = re.compile(r"(?:\s*,\s*|\s+)and\s+then\s+", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?]+(?=\s+[\"\u201c\u2018'(]?[A-Z])")
_WORD_BEFORE = re.compile(r"(\S+)$")


def _quote_mask(text: str) -> List[bool]:
    """True for every character inside a matched pair of quotes (quotes included)."""
    mask = [False] * len(text)
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        close = -1
        if ch == '"':
            close = text.find('"', i + 1)
        elif ch == "\u201c":
            close = text.find("\u201d", i + 1)
        elif ch in ("'", "\u2018") and (i == 0 or text[i - 1].isspace() or text[i - 1] in "([{-"):
            closer = "'" if ch == "'" else "\u2019"
            j = text.find(closer, i + 1)
            while j != -1:
                after = text[j + 1] if j + 1 < n else ""
                if not after.isalnum():
                    close = j
                    break
                j = text.find(closer, j + 1)
        if close > i:
            for k in range(i, close + 1):
                mask[k] = True
            i = close + 1
        else:
            i += 1
    return mask


def _outside(mask: List[bool], start: int, end: int) -> bool:
    return not any(mask[start:max(end, start + 1)])


def _inline_number_cuts(text: str, mask: List[bool], line_start: int, line_end: int) -> list:
    line = text[line_start:line_end]
    matches = [m for m in _INLINE_NUMBER.finditer(line)
               if _outside(mask, line_start + m.start(), line_start + m.end())]
    if not matches or line[:matches[0].start()].strip() or matches[0].group(1) != "1":
        return []
    cuts, expected = [], 2
    for m in matches[1:]:
        if int(m.group(1)) == expected:
            cuts.append((line_start + m.start(), line_start + m.start()))
            expected += 1
    return cuts


def _is_sentence_end(text: str, stop: int) -> bool:
    """Whether the stop punctuation starting at ``stop`` ends a sentence."""
    word = _WORD_BEFORE.search(text[:stop])
    if word is None:
        return False
    token = word.group(1).strip("\"'([{\u201c\u2018").lower()
    if not token or token.isdigit() or token.rstrip(".") in _ABBREVIATIONS:
        return False
    if len(token) == 1 and token.isalpha():
        return False
    return True


def split_instructions(text: str) -> List[str]:
    """Split ``text`` into instructions (see the module docstring for the exact rules)."""
    if not isinstance(text, str):
        raise InputError("instructions", f"must be text, got {type(text).__name__}.",
                         "Type one instruction per line.")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    mask = _quote_mask(text)
    cuts = []  # (start, end) spans removed from the text; start == end is a plain split
    line_start = 0
    for i, ch in enumerate(text + "\n"):
        if i < len(text) and not (ch in "\n;" and not mask[i]):
            continue
        cuts.extend(_inline_number_cuts(text, mask, line_start, i))
        if i < len(text):
            cuts.append((i, i + 1))
        line_start = i + 1
    for m in _AND_THEN.finditer(text):
        if _outside(mask, m.start(), m.end()):
            cuts.append((m.start(), m.end()))
    for m in _SENTENCE_END.finditer(text):
        if _outside(mask, m.start(), m.end()) and _is_sentence_end(text, m.start()):
            cuts.append((m.end(), m.end()))
    pieces, position = [], 0
    for start, end in sorted(cuts):
        if start < position:  # overlapping separators (e.g. ";" inside ", and then ")
            position = max(position, end)
            continue
        pieces.append(text[position:start])
        position = end
    pieces.append(text[position:])
    result = []
    for piece in pieces:
        piece = _LIST_MARKER.sub("", piece, count=1).strip().rstrip(",").rstrip()
        if any(ch.isalnum() for ch in piece):
            result.append(piece)
    return result
