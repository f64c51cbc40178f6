"""egress-router: a fixed, firewall-whitelistable source IP for cluster egress traffic."""

__version__ = "0.1.0"
