"""Text for people from data: rich `Text`, never read as markup.

Reasons, commit messages, actor names and errors come from outside; printed as a rich string,
`[]x[/]` raises MarkupError and `[link=…]` makes a link. Everything shown goes through here:
data is taken literally, and control characters (an escape sequence would restyle or clear
the terminal) are shown as `\\x1b`-style escapes.
"""

from __future__ import annotations

from rich.text import Text

# C0 and C1 control characters and DEL, but for newline and tab.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f, *range(0x80, 0xa0))
             if chr(c) not in "\n\t"}

Part = str | tuple[str, str] | Text


def clean(value: object) -> str:
    """The value as a string a terminal shows as it is."""
    return str(value).translate(_CONTROLS)


def plain(value: object, style: str = "") -> Text:
    """Data as text: taken literally, in one style."""
    return Text(clean(value), style=style)


def line(*parts: Part) -> Text:
    """A line of parts: a string is shown as it is, a (text, style) pair in that style."""
    text = Text()
    for part in parts:
        if isinstance(part, Text):
            text.append_text(part)
        elif isinstance(part, tuple):
            text.append(clean(part[0]), style=part[1])
        else:
            text.append(clean(part))
    return text
