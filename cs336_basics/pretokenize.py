"""Pre-tokenization rules, in one place: GPT-2's pattern, special tokens, and where text may be cut.

Used by the tokenizer (`tokenizer.py`), the dataset command (`tokenize_dataset.py`) and BPE training (`bpe.py`).

Public API
----------
GPT2_PATTERN                  GPT-2's pre-tokenization regex (the `regex` module's syntax; tiktoken's `pat_str`).
GPT2_RE                       GPT2_PATTERN compiled with `regex` (for any str).
GPT2_ASCII_RE                 the same split for ASCII-only str, stdlib `re` (2-3x faster); GPT2_ASCII_BYTES_RE
                              the same on ASCII bytes (yields bytes).
WHITESPACE_CHARS              the code points GPT2_PATTERN's \\s matches (Unicode White_Space); ASCII_WHITESPACE
                              its ASCII part. (The stdlib `re` also counts U+001C..U+001F as \\s: never use its \\s.)
PIECE_RE                      stdlib `re` that cuts text into *pieces*: a whitespace run then a non-whitespace run,
                              and a final whitespace run. Pieces pre-tokenize independently (see `last_safe_cut`).
SpecialTokens(tokens)         the special-token splitter: `.split(text)` -> [text, special, text, ...], longest
                              first; `.regex` / `.bytes_regex` (the same alternation on str / UTF-8 bytes);
                              `.max_len` (chars).
straddles(buf, pos, tokens)   does an occurrence of some token start before `pos` and end after it (str or bytes)?
first_safe_cut(window, lo, specials_b)
                              bytes: the first cut >= lo that splits encoding exactly, judged from the window alone.
first_safe_cut_in_file(f, target, size, specials_b)
                              the same in a file: the first cut at or after byte `target`, reading bounded windows.
last_safe_cut(text, specials, start=0)
                              str: the last cut of a growing stream's buffer that no later text can move.

Why the cuts are exact
----------------------
Splitting text at c is exact (encode(text) == encode(text[:c]) + encode(text[c:])) when (1) no special-token
*match* spans c, so the longest-first scan finds the same matches in both halves, and (2) c is a special-token
match boundary or a pre-token boundary of GPT2_PATTERN that holds whatever surrounds it. These hold everywhere:

* a non-whitespace character followed by a whitespace character (no alternative of the pattern carries a token
  from a non-space over a following space, and the pattern has no look-behind);
* (in long runs without whitespace) letter | non-letter, digit | non-digit, other | digit (other | letter is not
  one: "'s" is one pre-token).

When the text left of the window is unknown (`first_safe_cut`), (1) is checked for every *occurrence* of a
special token, matched or not, which implies it.
"""

import re

import regex

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_RE = regex.compile(GPT2_PATTERN)

# What `regex` (and tiktoken's Rust regex) match with \s: Unicode White_Space. A test checks it against `regex`.
WHITESPACE_CHARS = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
ASCII_WHITESPACE = "\t\n\x0b\x0c\r "
_WS = "[" + re.escape(WHITESPACE_CHARS) + "]"
_NON_WS = "[^" + re.escape(WHITESPACE_CHARS) + "]"
PIECE_RE = re.compile(f"{_WS}*{_NON_WS}+|{_WS}+")


def _ascii_twin(pattern: str) -> str:
    """GPT2_PATTERN restricted to ASCII, for the stdlib `re`: in ASCII, \\p{L} is [A-Za-z], \\p{N} is [0-9] and \\s
    is ASCII_WHITESPACE. (A test checks the twin against GPT2_RE on every short ASCII string.)"""
    ws = "".join(f"\\x{ord(c):02x}" for c in ASCII_WHITESPACE)
    return (
        pattern.replace(r"[^\s\p{L}\p{N}]", f"[^{ws}A-Za-z0-9]")
        .replace(r"\p{L}", "[A-Za-z]")
        .replace(r"\p{N}", "[0-9]")
        .replace(r"(?!\S)", f"(?![^{ws}])")
        .replace(r"\s", f"[{ws}]")
    )


GPT2_ASCII_PATTERN = _ascii_twin(GPT2_PATTERN)
GPT2_ASCII_RE = re.compile(GPT2_ASCII_PATTERN)
GPT2_ASCII_BYTES_RE = re.compile(GPT2_ASCII_PATTERN.encode("ascii"))

# A non-space followed by a space: the main safe cut (searched from the right).
_WS_CUT_RE = regex.compile(r"\S(?=\s)", flags=regex.REVERSE)
# Pre-token boundaries inside runs without spaces (see the module docstring).
_CLASS_CUT_RE = regex.compile(r"\p{L}(?=[^\s\p{L}])|\p{N}(?=[^\s\p{N}])|[^\s\p{L}\p{N}](?=\p{N})", flags=regex.REVERSE)
# Bytes: a printable ASCII non-space (never part of a multi-byte character) followed by " " or "\n".
_ASCII_WS_CUT_RE = re.compile(rb"[!-~](?=[ \n])")
_CLASS_CUT_MIN_CHARS = 4096  # class-change cuts are looked for only in buffers at least this long without a space
_CLASS_CUT_WINDOW = 1 << 16  # ... and only in their last 64k chars (the regex is slow: ~0.7 us a char)


class SpecialTokens:
    """The special-token splitter: one alternation, longest token first, so `<|a|>x` wins over its prefix `<|a|>`.

    tokens: non-empty strings, in the caller's order (duplicates dropped). Matching the UTF-8 bytes (`bytes_regex`)
    finds the same places as matching the text: UTF-8 is self-synchronizing.

    >>> SpecialTokens(["<|a|>", "<|a|>x"]).split("1<|a|>x2<|a|>")
    ['1', '<|a|>x', '2', '<|a|>', '']
    """

    def __init__(self, tokens: list[str] | tuple[str, ...] = ()):
        for token in tokens:
            if not isinstance(token, str) or not token:
                raise ValueError(f"special_tokens must be non-empty strings, got {token!r}")
        self.tokens: list[str] = list(dict.fromkeys(tokens))
        self.longest_first = sorted(self.tokens, key=len, reverse=True)
        self.encoded = [t.encode("utf-8") for t in self.tokens]
        self.max_len = max(map(len, self.tokens), default=0)
        alternation = "|".join(map(re.escape, self.longest_first))
        self.regex = re.compile(f"({alternation})") if self.tokens else None
        by_bytes = sorted(self.encoded, key=len, reverse=True)  # (longest in chars is longest in bytes too)
        self.bytes_regex = re.compile(b"|".join(map(re.escape, by_bytes))) if self.tokens else None

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def split(self, text: str) -> list[str]:
        """[text, special, text, special, ..., text]: odd positions are the matched special tokens."""
        return self.regex.split(text) if self.regex is not None else [text]


def straddles(buf, pos: int, tokens) -> bool:
    """True when an occurrence of some token in `tokens` (str or bytes, like `buf`) starts before `pos` and ends
    after it, within `buf`."""
    for token in tokens:
        for k in range(1, len(token)):
            if pos - k >= 0 and buf.startswith(token, pos - k):
                return True
    return False


def first_safe_cut(window: bytes, lo: int, specials_b: list[bytes], at_eof: bool = False) -> int | None:
    """The first exact cut c >= lo in `window` (UTF-8 bytes), judged from the window alone, or None.

    c is either the start of a special-token occurrence, or sits between a printable ASCII non-space byte and
    " " / "\\n"; and no occurrence of any special token starts before c and ends after it. So c falls between
    characters, and the split is exact whatever the text around the window (see the module docstring).
    The window must hold max_len - 1 bytes before `lo` (or start at a safe cut) so every straddler is seen; on
    the right, c stays max_len bytes from the window's end unless `at_eof` (the window ends the text).
    """
    max_len = max(map(len, specials_b), default=1)
    hi = len(window) if at_eof else len(window) - max_len  # the last cut whose straddlers all fit in the window
    while lo <= hi:
        candidates = []
        for special in specials_b:
            at = window.find(special, lo, hi + len(special))
            if 0 <= at <= hi:
                candidates.append(at)
        m = _ASCII_WS_CUT_RE.search(window, lo, hi + 1)
        if m is not None:
            candidates.append(m.end())
        if not candidates:
            return None
        for cut in sorted(candidates):
            if not straddles(window, cut, specials_b):
                return cut
        lo = min(candidates) + 1  # all straddled (a special token that holds a space, or overlaps): look on
    return None


_SEARCH_WINDOWS = (1 << 12, 1 << 16)  # bytes read past a target offset for a cut: a little first, then more


def first_safe_cut_in_file(f, target: int, size: int, specials_b: list[bytes]) -> int | None:
    """The first exact cut at or after byte `target` of the open binary file `f` (`size` bytes), or None when
    there is none before the end. Reads a 4 kB window past the target, then a 64 kB one, then steps on 64 kB at a
    time (inside one enormous word), so memory stays bounded; the windows follow on, so no cut is skipped."""
    max_len = max(map(len, specials_b), default=1)
    while target < size:
        base = max(0, target - max_len)  # the window holds every occurrence that could straddle a cut
        for window_size in _SEARCH_WINDOWS:
            f.seek(base)
            window = f.read(target - base + window_size + max_len)
            at_eof = base + len(window) >= size
            cut = first_safe_cut(window, target - base, specials_b, at_eof=at_eof)
            if cut is not None:
                return base + cut
            if at_eof:
                return None
        target += _SEARCH_WINDOWS[-1]
    return None


def last_safe_cut(text: str, specials: SpecialTokens, start: int = 0) -> int:
    """A cut i of a stream's buffer `text` (which starts at an exact cut) such that encode(text[:i] + rest) ==
    encode(text[:i]) + encode(rest) for every continuation `rest`; 0 when none is found.

    It is the largest of: the last non-space followed by whitespace, the end of the last special-token match, and
    (only when the buffer has no space and at least 4096 chars) the last letter/digit/other class change in the
    last 64k chars; all among positions whose special-token matches are final: the last `specials.max_len - 1`
    characters are never cut, since a longer special token starting there could still win over a shorter one.
    (Other exact cuts may lie further right: this is not the largest exact cut, only a cheap one that is always
    exact.) `start`: look for space and class cuts only at or after it (a caller that searched a shorter buffer
    before and found none passes where that search ended), so a growing buffer is scanned once.
    """
    n = len(text)
    limit = n - specials.max_len + 1 if specials.max_len else n  # characters right of the cut that must be known
    if limit <= 0:
        return 0
    cut = 0
    end = min(limit, n - 1) + 1  # a cut c <= limit needs text[c]
    m = _WS_CUT_RE.search(text, start, end)  # "\S" at cut-1 with "\s" at cut
    if m is not None:
        cut = m.end()
    elif n >= _CLASS_CUT_MIN_CHARS:  # no space in a long run: class changes (keeps the buffer bounded)
        m = _CLASS_CUT_RE.search(text, max(start, end - _CLASS_CUT_WINDOW), end)
        if m is not None:
            cut = m.end()
    if specials.regex is not None:
        # Matches that start before `limit` are final. A match's end is a hard boundary, and a cut inside a match
        # is overtaken by that match's end, so the maximum is exact.
        for sm in specials.regex.finditer(text):
            if sm.start() >= limit:
                break
            cut = max(cut, sm.end())
    return cut
