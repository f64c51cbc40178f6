"""EDGE: libnftables' JSON interface through ctypes: a batch of commands in, the listing out.

Our own few lines instead of the `nftables` Python binding: that binding is not on PyPI, and Debian's
python3-nftables installs into the system interpreter's dist-packages and depends on Debian's python3, which a
venv on the official python images does not see. Both are thin ctypes wrappers over the same five calls.
"""

from __future__ import annotations

import ctypes
import functools
import json
from typing import Any

LIBRARY = "libnftables.so.1"
OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON


class NftError(Exception):
    """libnftables refused a command (the batch was not applied) or cannot be loaded; the message is nft's own."""


@functools.cache
def _library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBRARY)
    except OSError as error:
        raise NftError(f"cannot load {LIBRARY} ({error}); is libnftables1 installed?") from error
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = ctypes.c_char_p
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


def load() -> None:
    """Raise NftError when the library is missing."""
    _library()


def run(commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run JSON commands as one batch (one transaction: all applied, or none); returns what they listed."""
    lib = _library()
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise NftError("libnftables could not create a context")
    try:
        lib.nft_ctx_output_set_flags(ctx, OUTPUT_JSON)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        failed = lib.nft_run_cmd_from_buffer(ctx, json.dumps({"nftables": commands}).encode())
        output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
        errors = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
    finally:
        lib.nft_ctx_free(ctx)
    if failed:
        raise NftError(_first_error(errors) or "libnftables refused the commands")
    listed: list[dict[str, Any]] = json.loads(output)["nftables"] if output.strip() else []
    return listed


def _first_error(text: str) -> str:
    """nft's message without the position prefix JSON input gets (`internal:0:0-0: Error: ...`)."""
    for line in text.splitlines():
        if "Error:" in line:
            return line.split("Error:", 1)[1].strip()
    return text.strip()
