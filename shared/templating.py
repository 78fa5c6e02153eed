"""Template placeholders `((name))`: finding them and rendering a template with personalization values.

Used by the API when it accepts a notification that names a template (to check the personalization and render
the body into the cached document), when it previews a template, and by GET when it rebuilds a stored notification
from Postgres, so all produce the same text.

A rendering can be far longer than its request: a template of `((a))` x 20,000 with a 4,096-character `a` renders
82 million characters from a 4 KB request. So `render_within` measures a rendering before producing it: one scan
of the template collects its pieces (literal slices and references to the values, no copies of the values) and
adds up their lengths; only a rendering within the limit is joined. A refused one costs the scan of the template
(bounded by its own length), never the rendering.
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


def _pieces(text: str, values: Mapping[str, str]) -> tuple[list[str], int]:
    """Return the pieces `text` renders to with `values` (a missing value leaves its placeholder) and their length."""
    pieces: list[str] = []
    length = last = 0
    for match in PLACEHOLDER.finditer(text):
        start, end = match.span()
        value = values.get(match.group(1))
        if value is None:
            value = match.group(0)
        pieces.append(text[last:start])
        pieces.append(value)
        length += start - last + len(value)
        last = end
    pieces.append(text[last:])
    return pieces, length + len(text) - last


def rendered_length(text: str | None, values: Mapping[str, str]) -> int:
    """Return how many characters `render(text, values)` would produce, without producing them."""
    return 0 if text is None else _pieces(text, values)[1]


def render(text: str | None, values: Mapping[str, str]) -> str | None:
    """Replace every `((name))` in `text` with `values[name]`; names without a value are left as they are.

    Unbounded: for a template and values a client chose, use `render_within`.
    """
    if text is None:
        return None
    return "".join(_pieces(text, values)[0])


def render_within(texts: Sequence[str | None], values: Mapping[str, str], limit: int) -> list[str | None]:
    """Render each of `texts` (a subject and a body, say) with `values`, if together they are at most `limit` long.

    Raises:
        RenderedTooLongError: the renderings would add up to more than `limit` characters; none was produced.
    """
    measured = [None if text is None else _pieces(text, values) for text in texts]
    length = sum(pieces[1] for pieces in measured if pieces is not None)
    if length > limit:
        raise RenderedTooLongError(length, limit)
    return [None if pieces is None else "".join(pieces[0]) for pieces in measured]
