"""``sockproto``'s public names: one list (``_EXPORTS``), resolved lazily, and the
type checkers' imports in step with it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import sockproto

INIT = Path(sockproto.__file__)


def type_checking_imports() -> dict[str, str]:
    """The names imported under ``if TYPE_CHECKING:``, with their absolute module."""
    tree = ast.parse(INIT.read_text())
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.level == 1, ast.dump(imp)
                for alias in imp.names:
                    names[alias.asname or alias.name] = f"sockproto.{imp.module}"
    return names


class PublicNamesTests(SynchronousTestCase):
    def test_all_is_the_export_list(self) -> None:
        self.assertEqual(sorted(sockproto.__all__), sorted(sockproto._EXPORTS))

    def test_every_name_resolves_to_its_module_object(self) -> None:
        for name, module in sockproto._EXPORTS.items():
            self.assertIs(getattr(sockproto, name), getattr(importlib.import_module(module), name), name)

    def test_type_checking_imports_match_the_exports(self) -> None:
        self.assertEqual(type_checking_imports(), sockproto._EXPORTS)

    def test_dir_lists_every_export(self) -> None:
        self.assertLessEqual(set(sockproto._EXPORTS), set(dir(sockproto)))

    def test_unknown_name(self) -> None:
        self.assertRaises(AttributeError, getattr, sockproto, "NoSuchName")
