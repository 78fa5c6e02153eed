"""Rendering templates within a bound: the length is measured exactly, and a refusal renders nothing."""

import html
import tracemalloc

import pytest

from shared.templating import Measure, RenderedTooLongError, placeholders, render, render_within

VALUES = {"name": "Ann", "code": "1234", "empty": "", "amp": "&<>\"'", "long": "x" * 5000, "nl": "a\n\nb"}
TEMPLATES = [
    "",
    "plain text, no placeholder",
    "((name))",
    "Hi ((name)), your code is ((code)).",
    "((name))((name))((name))",  # repeated
    "((missing)) stays as written, and so does (( missing )) with spaces",
    "(( name )) with spaces around the name",
    "((empty))((empty))x",
    "((amp)) ((amp)) <b>((name))</b>",
    "((long))" * 7,
    "a((nl))b((unknown))c((name",  # an unclosed placeholder is text
    "(((name)))",  # parentheses around a placeholder
    "Ünïcödé ((name)) ✓",
]


@pytest.mark.parametrize("template", TEMPLATES)
def test_the_measured_length_is_the_rendered_length(template: str) -> None:
    rendered = render(template, VALUES)
    assert rendered is not None

    assert Measure(template)(VALUES) == len(rendered)
    assert Measure(template, None, template)(VALUES) == 2 * len(rendered)
    assert Measure(template)({}) == len(template)  # no values: every placeholder as written
    longest = dict.fromkeys(placeholders(template), "x" * 5000)  # every placeholder at its longest
    assert Measure(template).longest(5000) == len(render(template, longest) or "")
    assert render_within([template], VALUES, len(rendered)) == [rendered]
    # escaping is per character and no placeholder holds an escaped one: measuring with escaped values gives the
    # length of the escaped rendering
    escaped = {name: html.escape(value) for name, value in VALUES.items()}
    assert Measure(html.escape(template))(escaped) == len(html.escape(rendered))


def test_render_within_counts_every_text_together_and_refuses_one_character_over() -> None:
    subject, body = "Hi ((name))", "Your code is ((code)). ((missing))"
    total = len(render(subject, VALUES) or "") + len(render(body, VALUES) or "")

    assert render_within((subject, body, None), VALUES, total) == [
        render(subject, VALUES),
        render(body, VALUES),
        None,
    ]
    with pytest.raises(RenderedTooLongError) as refused:
        render_within((subject, body, None), VALUES, total - 1)
    assert (refused.value.length, refused.value.limit) == (total, total - 1)


def test_a_huge_rendering_is_refused_without_being_rendered() -> None:
    # issue 19: a 4 KB request of a 100,000-character template `((a))` x 20,000 with `a` of 4,096 characters
    # would render 82 million characters (82 MB)
    template, values = "((a))" * 20_000, {"a": "&" * 4096}
    tracemalloc.start()
    try:
        with pytest.raises(RenderedTooLongError) as refused:
            render_within((None, template), values, 20_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert refused.value.length == 20_000 * 4096
    assert peak < 4 * 1024 * 1024  # the template's pieces (references to the one value), never the rendering
