"""The HTTP proxy mode: a forward proxy with an allow/deny list and CONNECT tunnels."""
