"""README's two set-up commands are exactly what CI runs; the README stays short and its
links resolve."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_readme_commands():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)
    assert len(commands) == 2, "README's set-up gives one install and one test command"
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci_lines


def test_readme_is_short_and_its_links_resolve():
    """The README is for users (the reference lives in docs/); every relative link it and the
    docs pages make points at a file that exists."""
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 150
    for page in [readme, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
