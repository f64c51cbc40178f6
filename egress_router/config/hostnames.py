"""Host names as the lists accept them: letters, digits, '-' and '_' in labels, compared case-insensitively."""

from __future__ import annotations


def normalize_host(host: str) -> str:
    """Host names compare case-insensitively and without a trailing root dot."""
    return host.strip().lower().rstrip(".")


def _label_ok(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in label)
        and not label.startswith("-")
        and not label.endswith("-")
    )


def host_name_problem(name: str) -> str | None:
    """Why `name` is not a usable host name, or None."""
    if len(name) > 253:
        return "name longer than 253 characters"
    labels = name.split(".")
    if not all(_label_ok(label) for label in labels):
        return "not a valid host name, address or CIDR"
    if labels[-1].isdigit():
        return "not a valid address (a name cannot end in a number)"
    return None
