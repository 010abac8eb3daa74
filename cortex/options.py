"""Checks plugins share on the options configuration gives their sink or enricher instances."""

from __future__ import annotations

from typing import Iterable, Mapping


def refuse_unknown_options(options: Mapping[str, object], known: Iterable[str], owner: str = "") -> None:
    """Raise ``ValueError`` naming the options of ``options`` that are not in ``known``
    (a typo in the configuration), and listing the known ones.

    ``owner`` starts the message, e.g. ``"sink 'archive' (file): "``.
    """
    known = set(known)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"{owner}unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
