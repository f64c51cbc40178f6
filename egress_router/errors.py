"""Failures while changing the system (as opposed to ConfigError, found before any change)."""


class ApplyError(Exception):
    """A step of `init` failed; the message says which step and why, in one line."""


class Terminated(BaseException):
    """SIGTERM arrived while `init` was changing the network: roll back, then stop."""
