"""Members' text made safe to publish: Discord markdown and masked links neutralised (no discord here).

A member's correction is published in the bot's answers and in its "Did you mean …?" offers, to everyone. Written
as it is, ``[staff discount](https://evil.invalid/steal)`` would go out as a live link whose target nobody sees,
and ``**`` or ``# `` would change how the bot's answer looks. :func:`neutralise` escapes every markdown character
with a backslash, so Discord shows exactly the characters the member typed (the URL in full, as plain text it
autolinks visibly), and an admin reviewing it sees exactly what will be published. Text an admin wrote is
published as written (admins may format answers and link).
"""

from __future__ import annotations

import re

# Characters that format text anywhere in a line (the brackets make masked links; the backslash first, so an
# escape typed by the member cannot cancel ours).
_INLINE = re.compile(r"([\\*_~|`\[\]])")
# What formats only at the start of a line: quotes, headings, subtext ("-# "), list markers are harmless.
_LINE_START = re.compile(r"^([ \t]*)(>|#|-#)", re.MULTILINE)


def neutralise(text: str) -> str:
    """``text`` with its markdown and masked links shown literally (idempotent only on plain text)."""
    return _LINE_START.sub(r"\1\\\2", _INLINE.sub(r"\\\1", text))


def published(text: str, *, trusted: bool) -> str:
    """How ``text`` is published: as written when an admin wrote it (``trusted``), else neutralised."""
    return text if trusted else neutralise(text)
