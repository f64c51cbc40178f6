"""The DNS proxy mode: TCP relays to destinations given by name, following their DNS records."""
