"""docs/bad-input.rst cites tests: every one it names must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent.parent
PAGE = ROOT / "docs" / "bad-input.rst"
CITATION = re.compile(r"``((?:tests/[\w/]+\.py|…)(?:::[\w\[\]]+)+)``")


def citations(text: str) -> list[tuple[str, list[str]]]:
    """The ``path::Class::test`` ids of the page; ``…::`` repeats the last path named."""
    found = []
    path = ""
    for match in CITATION.finditer(text.replace("\n", " ")):
        head, *names = match.group(1).split("::")
        path = path if head == "…" else head
        found.append((path, [re.sub(r"\[.*\]$", "", n) for n in names]))
    return found


def defined(path: Path, names: list[str]) -> bool:
    """Whether ``names`` (a class then a method, or a function) is defined in ``path``."""
    body: list[ast.stmt] = ast.parse(path.read_text()).body
    for name in names:
        node = next((n for n in body if getattr(n, "name", None) == name), None)
        if node is None:
            return False
        body = getattr(node, "body", [])
    return True


class CitationTests(SynchronousTestCase):
    def test_every_cited_test_exists(self) -> None:
        cited = citations(PAGE.read_text())
        self.assertGreater(len(cited), 50)
        missing = [
            f"{p}::{'::'.join(n)}" for p, n in cited if not (ROOT / p).exists() or not defined(ROOT / p, n)
        ]
        self.assertEqual(missing, [])
