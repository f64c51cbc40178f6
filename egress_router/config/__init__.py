"""Pure parsing: environment text in, typed and validated values out (no I/O, no root)."""
