"""`sie up`'s port check: only a listener makes a port "in use", not TIME_WAIT leftovers."""

from __future__ import annotations

import socket

from ops.stack import port_is_free


def _time_wait_on_a_free_port() -> int:
    """A port with no listener left, only a closed connection in TIME_WAIT on it.

    The server side closes first, so the TIME_WAIT socket holds the server's
    port - as after Ctrl-C on a stack whose servers had clients.
    """
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = int(server.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end goes to TIME_WAIT
    client.recv(1)  # sees the FIN
    client.close()
    server.close()
    return port


def _bindable_without_reuseaddr(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_port_whose_connections_are_in_time_wait_counts_as_free() -> None:
    port = _time_wait_on_a_free_port()
    # The old check (a bind without SO_REUSEADDR) called this port "in use".
    assert not _bindable_without_reuseaddr(port), "no TIME_WAIT socket was left; the test proves nothing"
    assert port_is_free(port)


def test_a_port_with_a_listener_is_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert not port_is_free(int(server.getsockname()[1]))
