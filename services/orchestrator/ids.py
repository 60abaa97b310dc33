"""Session and turn ids as clients may send them. Ids become Redis keys, status messages and event fields,
so they are bounded and plain; a bad one is refused without repeating it."""

from __future__ import annotations

import re

MAX_ID_CHARS = 128
_ID = re.compile(r"[A-Za-z0-9_-]+")
_RULE = f"1 to {MAX_ID_CHARS} characters of A-Z, a-z, 0-9, '_' and '-'"


def id_problem(field: str, value: str, *, required: bool = True) -> str | None:
    """Why `value` is not a usable id, in a message that never quotes it; None when it is fine."""
    if not value:
        return f"{field} is required" if required else None
    if len(value) > MAX_ID_CHARS:
        return f"{field} is {len(value)} characters long; an id is {_RULE}"
    if not _ID.fullmatch(value):
        return f"{field} has characters an id may not contain; an id is {_RULE}"
    return None
