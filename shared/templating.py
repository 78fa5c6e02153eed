"""Template placeholders `((name))`: finding them and rendering a template with personalization values.

Used by the API when it accepts a notification that names a template (to check the personalization and render
the body into the cached document) and by GET when it rebuilds a stored notification from Postgres, so both
produce the same text.
"""

import re

PLACEHOLDER = re.compile(r"\(\(\s*([^()\s]+)\s*\)\)")


def placeholders(*texts: str | None) -> list[str]:
    """Return the placeholder names used in `texts`, in order of first appearance, without repeats."""
    seen: dict[str, None] = {}
    for text in texts:
        if text:
            for match in PLACEHOLDER.finditer(text):
                seen.setdefault(match.group(1), None)
    return list(seen)


def render(text: str | None, values: dict[str, str]) -> str | None:
    """Replace every `((name))` in `text` with `values[name]`; names without a value are left as they are."""
    if text is None:
        return None
    return PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), text)
