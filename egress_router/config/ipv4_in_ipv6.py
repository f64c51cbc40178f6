"""IPv6 addresses that carry an IPv4 address: so that an IPv4 rule cannot be bypassed by spelling its address in IPv6.

Two kinds, treated differently (README, "IPv6 in the proxies"):

* IPv4-mapped (`::ffff:a.b.c.d`) is not an IPv6 destination at all: a socket sends it as IPv4 to a.b.c.d.
  `canonical` turns it into that IPv4 address, so rules, refusals and connections all see one form.
* Embedded forms are real IPv6 destinations that a box on the way turns into IPv4 traffic to the address they
  carry: NAT64 (`64:ff9b::a.b.c.d`), 6to4 (`2002:AABB:CCDD::/48`), Teredo (server and client), IPv4-compatible
  (`::a.b.c.d`, routed by a `sit0` tunnel where that module is loaded), SIIT's IPv4-translated
  (`::ffff:0:a.b.c.d`) and ISATAP interface identifiers (`<any /64>:0:5efe:a.b.c.d`, `:200:5efe:` when
  universal). `embedded_ipv4` finds what they carry; deny rules and the loopback/link-local refusal look at it as
  well as at the IPv6 address.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from egress_router.config.addresses import IPAddress

IPV4_MAPPED = IPv6Network("::ffff:0:0/96")  # RFC 4291 2.5.5.2
NAT64_WELL_KNOWN = IPv6Network("64:ff9b::/96")  # RFC 6052
NAT64_LOCAL_USE = IPv6Network("64:ff9b:1::/48")  # RFC 8215: read as /96 prefixes inside it, the usual deployment
IPV4_COMPATIBLE = IPv6Network("::/96")  # RFC 4291 2.5.5.1 (deprecated); :: and ::1 are not among them
IPV4_TRANSLATED = IPv6Network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)
_LAST_32_BITS = (NAT64_WELL_KNOWN, NAT64_LOCAL_USE, IPV4_TRANSLATED)
#: RFC 5214 6.1: an ISATAP interface identifier is 00-00-5E-FE (the u bit may be set: 02-00-5E-FE), then the IPv4
#: address; the /64 in front of it is any prefix the ISATAP router serves.
ISATAP_MARK, ISATAP_MASK = 0x0000_5EFE, 0xFDFF_FFFF


def canonical(address: IPAddress) -> IPAddress:
    """The address a connection really goes to: an IPv4-mapped IPv6 address is its IPv4 address."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def canonical_network(network: IPv4Network | IPv6Network) -> IPv4Network | IPv6Network:
    """A rule written in IPv4-mapped form (`::ffff:10.0.0.0/104`) is the IPv4 rule (`10.0.0.0/8`)."""
    if isinstance(network, IPv6Network) and network.subnet_of(IPV4_MAPPED):
        return IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
    return network


def embedded_ipv4(address: IPAddress) -> tuple[IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address sends traffic towards through a translator or tunnel (none for IPv4,
    for IPv4-mapped addresses, which `canonical` handles, and for ordinary IPv6 addresses)."""
    if not isinstance(address, IPv6Address) or address.ipv4_mapped is not None:
        return ()
    carried: tuple[IPv4Address, ...] = ()
    if any(address in prefix for prefix in _LAST_32_BITS):
        carried = (IPv4Address(int(address) & 0xFFFFFFFF),)
    elif address in IPV4_COMPATIBLE:
        carried = () if int(address) <= 1 else (IPv4Address(int(address)),)
    elif address.sixtofour is not None:
        carried = (address.sixtofour,)
    elif address.teredo is not None:
        carried = address.teredo  # (server, client)
    if (int(address) >> 32) & ISATAP_MASK == ISATAP_MARK:  # any prefix: also one of the forms above
        isatap = IPv4Address(int(address) & 0xFFFFFFFF)
        carried += () if isatap in carried else (isatap,)
    return carried
