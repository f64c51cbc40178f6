"""/etc/resolv.conf as the C library reads it: nameservers, search domains, ndots, timeout, attempts.

Pure: text in, settings out; unknown lines are ignored as glibc does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_address

MAX_NAMESERVERS = 3  # glibc's MAXNS


@dataclass(frozen=True)
class ResolvConf:
    nameservers: tuple[str, ...] = ("127.0.0.1",)
    search: tuple[str, ...] = ()
    ndots: int = 1
    timeout: float = 5.0
    attempts: int = 2
    ignored: tuple[str, ...] = field(default=(), compare=False)


def parse_resolv_conf(text: str) -> ResolvConf:
    nameservers: list[str] = []
    search: tuple[str, ...] = ()
    ndots, timeout, attempts = 1, 5.0, 2
    ignored = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        keyword, *values = line.split()
        if keyword == "nameserver" and values:
            try:
                address = ip_address(values[0])  # a link-local nameserver keeps its interface (fe80::1%eth0), as glibc does
            except ValueError:
                ignored.append(raw)
                continue
            if len(nameservers) < MAX_NAMESERVERS:
                nameservers.append(str(address))
        elif keyword in ("search", "domain") and values:
            search = tuple(v.lower().rstrip(".") for v in values)  # the last search/domain line wins
        elif keyword == "options":
            for option in values:
                name, _, number = option.partition(":")
                if name in ("ndots", "timeout", "attempts") and number.isdigit():
                    value = int(number)
                    if name == "ndots":
                        ndots = min(value, 15)
                    elif name == "timeout":
                        timeout = float(min(max(value, 1), 30))
                    else:
                        attempts = min(max(value, 1), 5)
        else:
            ignored.append(raw)
    return ResolvConf(tuple(nameservers) or ("127.0.0.1",), search, ndots, timeout, attempts, tuple(ignored))


def candidates(name: str, conf: ResolvConf) -> list[str]:
    """Fully qualified names to try, in the order the C library tries them."""
    if name.endswith("."):
        return [name.rstrip(".")]
    searched = [f"{name}.{domain}" for domain in conf.search]
    if name.count(".") >= conf.ndots:
        return [name, *searched]
    return [*searched, name]
