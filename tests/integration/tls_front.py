"""A TLS-terminating TCP front for the local broker, for TLS tests.

tansu 0.6.0 cannot enable its own TLS listener (its ``--cert`` and ``--key``
flags sit in one mutually exclusive argument group, so it exits when given
both). The tests therefore put this front before a plaintext tansu whose
advertised listener is the front: every client connection, bootstrap and
per-broker, goes through TLS, and the front can require client certificates
signed by the test CA (mutual TLS), which tansu could not.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from pathlib import Path


class TlsFront:
    """Accepts TLS on ``127.0.0.1:port`` and pipes plaintext to ``upstream``, in a thread."""

    def __init__(
        self,
        port: int,
        upstream: tuple[str, int],
        *,
        cert_chain: Path,
        key: Path,
        client_ca: Path | None = None,
    ) -> None:
        self.port = port
        self.upstream = upstream
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(str(cert_chain), str(key))
        if client_ca is not None:
            self._context.load_verify_locations(str(client_ca))
            self._context.verify_mode = ssl.CERT_REQUIRED
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(_quiet_handshake_errors)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tls-front-{port}", daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> TlsFront:
        """Start listening; returns self."""
        self._thread.start()
        assert self._ready.wait(10), "TLS front did not start"
        return self

    def stop(self) -> None:
        """Close the listener and every connection."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self._context)
        )
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)
        except asyncio.CancelledError:  # the front is stopping
            for w in (writer, up_writer):
                w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _quiet_handshake_errors(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """Refused handshakes (plaintext or untrusted clients) are expected here, not errors."""
    if not isinstance(context.get("exception"), ssl.SSLError | ConnectionError):
        loop.default_exception_handler(context)
