"""docs/configuration.md is the rendering of the Settings docstrings (regenerate it when keys change)."""

from pathlib import Path

from regina.config_docs import render


def test_configuration_reference_is_current() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert doc.read_text() == render(), "run: python -m regina.config_docs > docs/configuration.md"
