"""A forgiving JSON reader for what language models actually write.

``find_values(text)`` returns every JSON-ish object or array in ``text`` (prose, code fences and
chat tokens around them are skipped). Beyond strict JSON it accepts single-quoted strings, Python
literals (True/False/None, \\x and \\U escapes), trailing commas, missing commas between members,
unquoted keys, ``//`` and ``/* */`` comments, NaN/Infinity, raw newlines in strings, and
unescaped quotes inside strings when the next character is a letter or digit
(``"the "red" car"``).

Cut-off or broken text does not fail: a container that ends early (end of text, or a character
that cannot continue it) comes back as :class:`PartialDict` / :class:`PartialList` holding the
members completed before the break. A scalar cut by the end of text (``"abc``, ``12``) is dropped,
since its full value is unknown. Callers decide what a partial container is worth.

Linear time: after a candidate ends (complete or not) the scan resumes where it stopped, and
nesting deeper than ``max_depth`` stops the candidate instead of recursing further.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, List

MAX_DEPTH = 48

_SPACE = re.compile(r"(?:\s+|//[^\n]*|/\*.*?(?:\*/|\Z))*", re.S)
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_WORD = re.compile(r"[-+]?[A-Za-z_][A-Za-z0-9_]*")
_START = re.compile(r"[\[{]")
_STRING_STOP = {'"': re.compile(r'["\\]'), "'": re.compile(r"['\\]")}
_NOT_SPACE = re.compile(r"\S")
_KEYWORDS = {
    "true": True, "True": True, "false": False, "False": False, "null": None, "None": None,
    "NaN": math.nan, "nan": math.nan, "Infinity": math.inf, "inf": math.inf,
    "+Infinity": math.inf, "+inf": math.inf, "-Infinity": -math.inf, "-inf": -math.inf,
}
_SIMPLE_ESCAPES = {
    "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "a": "\a", "/": "/",
    "\\": "\\", '"': '"', "'": "'", "\n": "",
}


class PartialDict(dict):
    """An object cut short: holds only the members completed before the break."""


class PartialList(list):
    """An array cut short: holds only the elements completed before the break."""


class _EndOfText(Exception):
    pass


class _Stop(Exception):
    pass


@dataclass
class Found:
    """One object or array found in the text."""

    value: Any
    start: int
    end: int
    complete: bool
    hit_end: bool  # True when the text ended inside it (a cut-off reply)


class _Reader:
    def __init__(self, text: str, pos: int, max_depth: int):
        self.text = text
        self.n = len(text)
        self.pos = pos
        self.max_depth = max_depth
        self.hit_end = False

    def skip(self):
        self.pos = _SPACE.match(self.text, self.pos).end()

    # -- values ------------------------------------------------------------------------------
    def value(self, depth: int):
        """Returns (value, complete). Raises _EndOfText / _Stop if no value starts here."""
        self.skip()
        if self.pos >= self.n:
            raise _EndOfText
        ch = self.text[self.pos]
        if ch == "{":
            return self.obj(depth + 1)
        if ch == "[":
            return self.arr(depth + 1)
        if ch in "\"'":
            return self.string(), True
        return self.scalar(), True

    def scalar(self):
        text, pos = self.text, self.pos
        m = _NUMBER.match(text, pos)
        if m:
            end = m.end()
            if end >= self.n:
                raise _EndOfText  # the number may continue beyond the cut
            if text[end].isalnum() or text[end] == "_":
                word = _WORD.match(text, pos)
                if not word or word.group() not in _KEYWORDS:
                    raise _Stop
            else:
                self.pos = end
                token = m.group()
                if any(c in token for c in ".eE"):
                    return float(token)
                try:
                    return int(token)
                except ValueError:  # more digits than int() accepts from text
                    return float(token)
        m = _WORD.match(text, pos)
        if m:
            word = m.group()
            if m.end() >= self.n and any(k.startswith(word) for k in _KEYWORDS):
                raise _EndOfText
            if word in _KEYWORDS:
                self.pos = m.end()
                return _KEYWORDS[word]
        if pos + 1 >= self.n and text[pos] in "+-":
            raise _EndOfText
        raise _Stop

    def string(self) -> str:
        text, n = self.text, self.n
        quote = text[self.pos]
        stop = _STRING_STOP[quote]
        self.pos += 1
        parts = []
        while True:
            m = stop.search(text, self.pos)
            if m is None:
                raise _EndOfText
            j = m.start()
            parts.append(text[self.pos:j])
            if text[j] == quote:
                after = _NOT_SPACE.search(text, j + 1)
                if after is not None and (text[after.start()].isalnum()):
                    parts.append(quote)  # an unescaped quote inside the string
                    self.pos = j + 1
                    continue
                self.pos = j + 1
                return "".join(parts)
            # backslash escape
            if j + 1 >= n:
                raise _EndOfText
            esc = text[j + 1]
            self.pos = j + 2
            if esc in _SIMPLE_ESCAPES:
                parts.append(_SIMPLE_ESCAPES[esc])
            elif esc in "xuU":
                width = {"x": 2, "u": 4, "U": 8}[esc]
                digits = text[self.pos:self.pos + width]
                if len(digits) < width and self.pos + width > n:
                    raise _EndOfText
                try:
                    code = int(digits, 16) if len(digits) == width and digits.isalnum() else -1
                except ValueError:
                    code = -1
                if code < 0 or code > 0x10FFFF:
                    parts.append("\\" + esc)  # not a valid escape: keep it as text
                    continue
                self.pos += width
                if esc == "u" and 0xD800 <= code < 0xDC00 and text.startswith("\\u", self.pos):
                    low = text[self.pos + 2:self.pos + 6]
                    try:
                        low_code = int(low, 16) if len(low) == 4 and low.isalnum() else -1
                    except ValueError:
                        low_code = -1
                    if 0xDC00 <= low_code < 0xE000:
                        code = 0x10000 + ((code - 0xD800) << 10) + (low_code - 0xDC00)
                        self.pos += 6
                parts.append(chr(code))
            elif esc in "01234567":
                end = self.pos
                while end < min(n, self.pos + 2) and text[end] in "01234567":
                    end += 1
                parts.append(chr(int(text[j + 1:end], 8)))
                self.pos = end
            else:
                parts.append("\\" + esc)

    # -- containers --------------------------------------------------------------------------
    def _child(self, depth: int):
        """(value, complete) of the next member, or None when the container must end here."""
        try:
            return self.value(depth)
        except _EndOfText:
            self.hit_end = True
            self.pos = self.n
            return None
        except _Stop:
            return None

    def obj(self, depth: int):
        if depth > self.max_depth:
            raise _Stop
        self.pos += 1
        result = {}
        text = self.text
        while True:
            self.skip()
            if self.pos >= self.n:
                self.hit_end = True
                return PartialDict(result), False
            ch = text[self.pos]
            if ch == "}":
                self.pos += 1
                return result, True
            if ch in "\"'":
                try:
                    key = self.string()
                except _EndOfText:
                    self.hit_end = True
                    self.pos = self.n
                    return PartialDict(result), False
            else:
                m = _WORD.match(text, self.pos) or _NUMBER.match(text, self.pos)
                if m is None or m.group()[0] in "+-":
                    return PartialDict(result), False
                key = m.group()
                self.pos = m.end()
            self.skip()
            if self.pos >= self.n:
                self.hit_end = True
                return PartialDict(result), False
            if text[self.pos] != ":":
                return PartialDict(result), False
            self.pos += 1
            member = self._child(depth)
            if member is None:
                return PartialDict(result), False
            value, complete = member
            result[key] = value
            if not complete:
                return PartialDict(result), False
            self.skip()
            if self.pos >= self.n:
                self.hit_end = True
                return PartialDict(result), False
            ch = text[self.pos]
            if ch == ",":
                self.pos += 1
            elif ch == "}":
                continue
            elif not (ch in "\"'" or ch.isalpha() or ch == "_"):  # else: a missing comma
                return PartialDict(result), False

    def arr(self, depth: int):
        if depth > self.max_depth:
            raise _Stop
        self.pos += 1
        result = []
        text = self.text
        while True:
            self.skip()
            if self.pos >= self.n:
                self.hit_end = True
                return PartialList(result), False
            if text[self.pos] == "]":
                self.pos += 1
                return result, True
            member = self._child(depth)
            if member is None:
                return PartialList(result), False
            value, complete = member
            if complete or isinstance(value, (dict, list)):
                result.append(value)
            if not complete:
                return PartialList(result), False
            self.skip()
            if self.pos >= self.n:
                self.hit_end = True
                return PartialList(result), False
            ch = text[self.pos]
            if ch == ",":
                self.pos += 1
            elif ch == "]":
                continue
            elif not (ch in "{[\"'+-." or ch.isdigit()):  # else: a missing comma
                return PartialList(result), False


def find_values(text: str, max_depth: int = MAX_DEPTH) -> List[Found]:
    """Every object/array in ``text``, in order, each parsed as far as it goes."""
    found = []
    pos = 0
    while True:
        m = _START.search(text, pos)
        if m is None:
            return found
        start = m.start()
        reader = _Reader(text, start, max_depth)
        try:
            value, complete = reader.obj(1) if text[start] == "{" else reader.arr(1)
        except _Stop:  # deeper than max_depth at the very start cannot happen; be safe
            pos = start + 1
            continue
        if complete or value:  # an empty broken container ("[MASK]", "{{") says nothing
            found.append(Found(value, start, reader.pos, complete, reader.hit_end))
        pos = max(reader.pos, start + 1)


def loads(text: str, max_depth: int = MAX_DEPTH):
    """The first object/array in ``text`` (possibly partial), or None if there is none."""
    values = find_values(text, max_depth)
    return values[0].value if values else None
