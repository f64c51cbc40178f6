"""Per-namespace kernel settings of the pod (/proc/sys/net belongs to the network namespace)."""

from __future__ import annotations

import logging

from egress_router.errors import ApplyError
from egress_router.init.journal import Journal

log = logging.getLogger(__name__)

PROC_SYS = "/proc/sys"


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


#: A dotted key as a path: dots become slashes, and slashes (sysctl(8)'s spelling of a dot in an interface name) dots.
_AS_PATH = str.maketrans("./", "/.")


def _path(key: str, root: str) -> str:
    return f"{root}/{key.translate(_AS_PATH)}"


def set_sysctl(journal: Journal, key: str, value: str, root: str = PROC_SYS, *, missing_ok: bool = False) -> bool:
    """Set `key` (dotted) to `value`; journaled so a later failure puts the old value back.

    `missing_ok`: a setting the kernel does not have (an interface's IPv6 settings without IPv6) is nothing to do."""
    path = _path(key, root)
    try:
        with open(path, encoding="ascii") as f:
            before = f.read().strip()
        if before == value:
            log.debug("%s is already %s", key, value)
            return False
        _write(path, value)
    except OSError as error:
        if missing_ok and isinstance(error, FileNotFoundError):
            log.debug("%s does not exist here: nothing to set", key)
            return False
        hint = " (is the init container privileged?)" if error.errno in (1, 13, 30) else ""
        raise ApplyError(f"cannot set {key}={value} in {path}: {error.strerror}{hint}") from error
    journal.record(f"set {key}={value}", lambda: _write(path, before))
    log.info("set %s=%s", key, value)
    return True


def raise_sysctl(journal: Journal, key: str, least: int, root: str = PROC_SYS) -> bool:
    """`key` to `least` where it is lower (a higher value is someone's choice, and kept); journaled as set_sysctl."""
    path = _path(key, root)
    try:
        with open(path, encoding="ascii") as f:
            before = f.read().strip()
    except FileNotFoundError:
        return False  # nothing to raise: the interface has no IPv6 (then it has no IPv6 address either)
    except OSError as error:
        raise ApplyError(f"cannot read {key} in {path}: {error.strerror}") from error
    if before.lstrip("-").isdigit() and int(before) >= least:
        return False
    return set_sysctl(journal, key, str(least), root)
