"""CI runs the README's test command, verbatim: keep the two in step."""

from tests.conftest import ROOT


def _commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("python3 -m venv .venv")]


def test_ci_runs_the_readme_test_command():
    readme = _commands((ROOT / "README.md").read_text())
    ci = _commands((ROOT / ".ci" / "run").read_text())
    assert len(readme) == 2, readme  # exactly two set-up commands: serve, and test
    assert "lathe serve" in readme[0] and "pytest" in readme[1]
    assert ci == [readme[1]]
