"""Length-prefixed JSON messages (with optional descriptors) between a Runtime
and its zygote over a Unix stream socket."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

__all__ = ["send", "recv", "recv_exact", "ChannelClosed"]

_HEADER = struct.Struct("!I")
MAX_MESSAGE = 64 * 2**20


class ChannelClosed(EOFError):
    """The other side closed the channel."""


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    body = json.dumps(message).encode()
    data = _HEADER.pack(len(body)) + body
    if fds:
        sent = socket.send_fds(sock, [data[:4096]], fds)
        data = data[sent:]
    sock.sendall(data)


def recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ChannelClosed("channel closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    head, fds, _flags, _addr = socket.recv_fds(sock, _HEADER.size, 4)
    if not head:
        raise ChannelClosed("channel closed")
    if len(head) < _HEADER.size:
        head += recv_exact(sock, _HEADER.size - len(head))
    (size,) = _HEADER.unpack(head)
    if size > MAX_MESSAGE:
        raise ValueError("message too large")
    message = json.loads(recv_exact(sock, size))
    if not isinstance(message, dict):
        raise ValueError("message is not an object")
    return message, list(fds)
