"""The scoping layer is the only way to the analytics tables: checked on the source."""

from __future__ import annotations

import re
from pathlib import Path

import cortex.analytics

PACKAGE = Path(cortex.analytics.__file__).parent


def test_only_the_scope_module_reaches_the_tables():
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name in ("scope.py", "store.py"):
            continue
        text = path.read_text()
        # the store's tables, its engine, or a raw SQL string would bypass the org filter
        for pattern in (r"store\.table\(", r"store\.engine", r"\._tables", r"sa\.text\(",
                        r"exec_driver_sql", r"build_tables"):
            if re.search(pattern, text):
                offenders.append(f"{path.name}: {pattern}")
    assert offenders == []
