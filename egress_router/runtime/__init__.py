"""What every long-running command shares: worker processes, listening sockets, followed list files,
deadlines, log setup and the byte tunnel between two connections."""
