"""Template placeholders `((name))`: finding them, and rendering a template with personalization values.

The API (accepting a notification, previewing a template) and GET (rebuilding a stored notification) render
through here, so all produce the same text. `render_within` measures a rendering before producing it (a 4 KB
request can name a template that would render to millions of characters): a refused one costs one split of the
template, never the rendering.
"""

import re
from collections.abc import Mapping, Sequence

PLACEHOLDER = re.compile(r"\(\(\s*([^()\s]+)\s*\)\)")


class RenderedTooLongError(ValueError):
    """A rendering would be longer than its limit; nothing was rendered. `length` is what it would have been."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"the rendered template would be {length} characters, longer than {limit}")
        self.length = length
        self.limit = limit


def placeholders(*texts: str | None) -> list[str]:
    """Return the placeholder names used in `texts`, in order of first appearance, without repeats."""
    seen: dict[str, None] = {}
    for text in texts:
        if text:
            for match in PLACEHOLDER.finditer(text):
                seen.setdefault(match.group(1), None)
    return list(seen)


def _pieces(text: str, values: Mapping[str, str]) -> list[str]:
    """Return the pieces `text` renders to with `values`: its literal parts and the values, not yet joined."""
    pieces = PLACEHOLDER.split(text)  # [literal, name, literal, name, ..., literal], split in C
    for index in range(1, len(pieces), 2):
        value = values.get(pieces[index])
        if value is None:  # rare (GET and sends check every placeholder has a value): keep it as written
            return _pieces_keeping_missing(text, values)
        pieces[index] = value
    return pieces


def _pieces_keeping_missing(text: str, values: Mapping[str, str]) -> list[str]:
    """`_pieces`, leaving a placeholder without a value as it was written (`(( name ))`)."""
    pieces: list[str] = []
    last = 0
    for match in PLACEHOLDER.finditer(text):
        start, end = match.span()
        pieces.append(text[last:start])
        pieces.append(values.get(match.group(1), match.group(0)))
        last = end
    pieces.append(text[last:])
    return pieces


def rendered_length(text: str | None, values: Mapping[str, str]) -> int:
    """Return how many characters `render(text, values)` would produce, without producing them."""
    return 0 if text is None else sum(map(len, _pieces(text, values)))


def render(text: str | None, values: Mapping[str, str]) -> str | None:
    """Replace every `((name))` in `text` with `values[name]`; names without a value are left as they are.

    Unbounded: for a template and values a client chose, use `render_within`.
    """
    return None if text is None else "".join(_pieces(text, values))


def render_within(texts: Sequence[str | None], values: Mapping[str, str], limit: int) -> list[str | None]:
    """Render each of `texts` (a subject and a body, say) with `values`, if together they are at most `limit` long.

    Raises:
        RenderedTooLongError: the renderings would add up to more than `limit` characters; none was produced.
    """
    measured: list[list[str] | None] = []
    length = 0
    for text in texts:
        pieces = None if text is None else _pieces(text, values)
        if pieces is not None:
            length += sum(map(len, pieces))
        measured.append(pieces)
    if length > limit:
        raise RenderedTooLongError(length, limit)
    return [None if pieces is None else "".join(pieces) for pieces in measured]
