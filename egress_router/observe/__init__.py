"""What an administrator sees of a running router: /healthz, /readyz and Prometheus /metrics on EGRESS_METRICS_PORT."""
