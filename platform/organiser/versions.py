"""Worker versions as the organiser's minimum compares them: ``0.1.0``, ``0.2``, ``1.0.0rc1``."""

from __future__ import annotations

import re

_VERSION = re.compile(r"^\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?([A-Za-z0-9.+-]*)\s*$")


def parse_version(text: str) -> tuple[int, int, int, int]:
    """``(major, minor, patch, final)``: a pre-release (``rc1``, ``.dev0``) sorts before its release.
    Raises ValueError for text that is not a version."""
    match = _VERSION.match(text or "")
    if not match:
        raise ValueError(f"{text!r} is not a version like 0.2.0")
    major, minor, patch, rest = match.groups()
    final = 0 if rest and not rest.startswith("+") else 1
    return int(major), int(minor or 0), int(patch or 0), final


def older_than(version: str, minimum: str) -> bool:
    """Whether a worker reporting ``version`` is older than ``minimum`` (an unparsable or empty version
    counts as older: a worker that does not say its version cannot be shown to be new enough)."""
    if not minimum:
        return False
    try:
        return parse_version(version) < parse_version(minimum)
    except ValueError:
        return True
