"""A namespace lab for the demo and the tests: real interfaces, real NAT, real traffic."""

from egress_router.lab.topology import Lab, LabError, Seen

__all__ = ["Lab", "LabError", "Seen"]
