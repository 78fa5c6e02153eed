"""The README stays true: every setting is in its configuration table, and the two commands are there."""

from pathlib import Path

from shared.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [name.upper() for name in Settings.model_fields if f"| `{name.upper()}` |" not in README]
    assert missing == []


def test_the_two_commands_are_shown() -> None:
    assert "make run" in README
    assert "make test" in README
