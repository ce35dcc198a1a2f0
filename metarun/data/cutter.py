"""The line cutter: joins a line's pieces with every long string cut, so a huge text is never held whole."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Tokens of a line: a JSON escape (kept or dropped whole; a partial one at a piece's end waits for the next piece),
# a quote, and the text between them.
JSON_TOKENS = re.compile(r'(?P<escape>\\(?:u[0-9a-fA-F]{0,4}|.)?)|(?P<quote>")|(?P<text>[^"\\]+)', re.S)
# CSV: an escaped quote "" inside a quoted field, a quote, a field or record end, and the text between them.
CSV_TOKENS = re.compile(r'(?P<escape>"")|(?P<quote>")|(?P<end>[,\r\n])|(?P<text>[^",\r\n]+)')


@dataclass
class Cutter:
    """Joins a line's pieces, cutting each quoted string (and, for CSV, each field) to `limit` source characters
    as it streams past, so a huge text is never held whole; escapes are kept or dropped whole, quotes and field
    ends always kept, so the line parses as before. State spans lines: a CSV field may."""

    tokens: re.Pattern[str]
    cut_unquoted: bool  # CSV fields may be unquoted; in JSON only strings are quoted
    limit: int
    quoted: bool = False
    used: int = 0  # source characters of the current string or field seen so far

    def __call__(self, pieces: Iterable[str]) -> str:
        kept, carry = [], ""
        for piece in pieces:
            tokens = list(self.tokens.finditer(carry + piece))
            # a quote or escape at a piece's end may be the start of a longer token ("" or \u00e9)
            carry = tokens.pop().group() if tokens and tokens[-1].lastgroup in ("escape", "quote") else ""
            kept.extend(self._keep(t.lastgroup, t.group()) for t in tokens)
        kept.extend(self._keep(t.lastgroup, t.group()) for t in self.tokens.finditer(carry))
        return "".join(kept)

    def _keep(self, kind: str, token: str) -> str:
        if kind == "quote":
            self.quoted, self.used = not self.quoted, 0
            return token
        if not (self.quoted or (kind == "text" and self.cut_unquoted)):
            self.used = 0 if kind == "end" else self.used  # a field end starts a new field
            return token
        room = self.limit - self.used
        self.used += len(token)
        if kind == "text":
            return token[: max(room, 0)]
        return token if len(token) <= room else ""
