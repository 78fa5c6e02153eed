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


class Measure:
    """The length `render` gives texts (a subject and a body, say) for any values, from one split of the texts.

    A job checks every row's rendering against MAX_RENDERED_LENGTH: the texts are split once per job, then each
    row costs a sum over its values' lengths, with nothing split, joined or rendered.
    """

    def __init__(self, *texts: str | None) -> None:
        self.literal = 0
        #: placeholder name → (times it occurs, the lengths of its written forms when it has no value)
        self.names: dict[str, tuple[int, int]] = {}
        for text in texts:
            if not text:
                continue
            last = 0
            for match in PLACEHOLDER.finditer(text):
                start, end = match.span()
                self.literal += start - last
                count, written = self.names.get(match.group(1), (0, 0))
                self.names[match.group(1)] = (count + 1, written + end - start)
                last = end
            self.literal += len(text) - last

    def longest(self, max_value_length: int) -> int:
        """Return the longest rendering of the texts with values of at most `max_value_length` characters each."""
        return self.literal + sum(max(count * max_value_length, written) for count, written in self.names.values())

    def __call__(self, values: Mapping[str, str]) -> int:
        """Return the length of the texts rendered with `values` (a placeholder without a value kept as written)."""
        length = self.literal
        for name, (count, written) in self.names.items():
            value = values.get(name)
            length += written if value is None else count * len(value)
        return length


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
