"""The DNS proxy mode: TCP forwarding to destinations given by name, following their DNS records."""
