"""The pod's network: what `init` builds (macvlan, addresses, routes, NAT) and `monitor` keeps in place.

`plan` and `cluster_routes` are pure; `apply` runs a plan through the edges (`netlink`, `nat`, `sysctl`,
`arp`), each change recorded in a `journal` so a failure puts everything back.
"""
