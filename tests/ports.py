"""Holding a port as an outgoing connection holds it (for the rendezvous tests)."""

from __future__ import annotations

import socket


def hold_like_an_outgoing_connection(port: int) -> list[socket.socket]:
    """A connected client socket on `port`, bound as the kernel binds an outgoing connection's
    ephemeral port (no SO_REUSEADDR): nothing may listen on that port while it is open.
    Returned so that `release` closes the accepting side first (its port, not this one, then
    waits in TIME_WAIT)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.bind(("0.0.0.0", port))
    client.connect(listener.getsockname())
    accepted, _ = listener.accept()
    return [accepted, listener, client]


def release(held: list[socket.socket]) -> None:
    for sock in held:
        sock.close()
