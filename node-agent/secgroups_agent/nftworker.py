"""The libnftables worker: runs nft commands in-process, in a child of the agent.

Started by :class:`secgroups_agent.nftables.LibNftWorker` as
``python -m secgroups_agent.nftworker REQ_FD RESP_FD``. It loads ``libnftables.so.1``
with ctypes and serves one request at a time over two inherited pipes, so that a crash
inside libnftables (nft 1.0.6 segfaults on some JSON objects,
docs/nftables.md#libnftables-crashes-on-some-json-input)
kills only this process: the agent sees EOF, reports the error, restarts the worker and
falls back to a full resync.

Standard library only, so that a restart is fast. Wire format (big endian):

* request:  ``op:1 flags:4 length:4 payload`` — op ``R`` runs the payload (nft text)
  with the given ``nft_ctx_output`` flags; op ``Q`` quits;
* response: ``rc:4 (signed) out_length:4 err_length:4 out err``.

The worker exits when its request pipe reaches EOF (the agent is gone) and asks the
kernel to kill it when its parent dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import sys

REQUEST = struct.Struct(">cII")
RESPONSE = struct.Struct(">iII")
OP_RUN = b"R"
OP_QUIT = b"Q"
LIBRARY = "libnftables.so.1"
_PR_SET_PDEATHSIG = 1


class LibNftables:
    """A libnftables context with buffered output and error (one per process)."""

    def __init__(self, library: str = LIBRARY) -> None:
        lib = ctypes.CDLL(library)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_output.restype = ctypes.c_int
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.restype = ctypes.c_int
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.restype = None
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib = lib
        ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not ctx:
            raise OSError("nft_ctx_new failed")
        self._ctx = ctypes.c_void_p(ctx)
        if lib.nft_ctx_buffer_output(self._ctx) or lib.nft_ctx_buffer_error(self._ctx):
            raise OSError("cannot buffer libnftables output")

    def run(self, text: bytes, flags: int = 0) -> tuple[int, bytes, bytes]:
        """Run ``text`` (one atomic transaction) with output ``flags``: (rc, out, err)."""
        self._lib.nft_ctx_output_set_flags(self._ctx, flags)
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text)
        # Reading a buffer also rewinds it, so the next command starts empty.
        out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
        err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        return rc, out, err


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def serve(req_fd: int, resp_fd: int, nft: LibNftables) -> None:
    """Answer requests until EOF or ``Q``."""
    while True:
        header = _read_exact(req_fd, REQUEST.size)
        if header is None:
            return
        op, flags, length = REQUEST.unpack(header)
        payload = _read_exact(req_fd, length) if length else b""
        if payload is None or op == OP_QUIT:
            return
        if op != OP_RUN:
            rc, out, err = -1, b"", b"Error: unknown worker operation " + op
        else:
            rc, out, err = nft.run(payload, flags)
        _write_all(resp_fd, RESPONSE.pack(rc, len(out), len(err)) + out + err)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    req_fd, resp_fd = int(args[0]), int(args[1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when we stop
    try:
        nft = LibNftables(os.environ.get("SECGROUPS_LIBNFTABLES", LIBRARY))
    except OSError as exc:
        msg = f"Error: cannot load libnftables: {exc}".encode()
        _write_all(resp_fd, RESPONSE.pack(-2, 0, len(msg)) + msg)
        return 2
    # Say hello, so the agent knows the library loaded before sending work.
    _write_all(resp_fd, RESPONSE.pack(0, 0, 0))
    serve(req_fd, resp_fd, nft)
    return 0


if __name__ == "__main__":
    sys.exit(main())
