"""A loopback TCP proxy for fault tests: add latency, or take the link down and up again.

It runs an asyncio loop in a background thread of the test process. Latency is real latency:
each chunk is delivered ``delay`` seconds after it arrived, in both directions, without lowering
throughput. While down, established connections are reset and new ones are accepted and reset
at once, which clients see as a server that is unreachable.

Kafka clients connect to the address the broker advertises, not to the bootstrap address; to
put a proxy in front of Kafka, start the broker with ``advertised_port`` set to the proxy's port.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from concurrent.futures import Future

_CHUNK_BYTES = 64 * 1024
#: Chunks buffered per direction before the proxy stops reading (TCP backpressure).
_QUEUE_CHUNKS = 256
_EOF = b""


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """Forward ``127.0.0.1:port`` to ``target_host:target_port`` with injectable faults."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_port: int = 0,
        listen_host: str = "127.0.0.1",
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self._listen_port = listen_port
        self._delay_s = 0.0
        self._down = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections_total = 0

    # -- public API ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port clients connect to (known once started)."""
        if self._server is None:
            raise RuntimeError("proxy not started")
        return self._listen_port

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    @property
    def active_connections(self) -> int:
        return len(self._links)

    def start(self) -> TcpProxy:
        """Start listening; returns once the port accepts connections."""
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()
        try:
            self._call(self._listen())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the listener and every connection, and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            with contextlib.suppress(Exception):
                self._call(self._shutdown())
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = None
        self._thread = None
        self._server = None

    def set_delay(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` in both directions (0 removes the delay)."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._delay_s = float(seconds)

    def set_down(self, down: bool) -> None:
        """Take the link down (reset all connections, refuse new ones) or bring it back up."""
        self._down = down
        if down and self._loop is not None:
            self._call(self._reset_all())

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- loop side ----------------------------------------------------------------------------

    def _call(self, coro: object) -> None:
        assert self._loop is not None
        future: Future[None] = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        future.result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.listen_host, self._listen_port, reuse_address=True
        )
        self._listen_port = int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset_all()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _reset_all(self) -> None:
        for client, upstream in list(self._links):
            _reset(client)
            _reset(upstream)
        self._links.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _serve(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        self.connections_total += 1
        if self._down:
            _reset(client_writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            _reset(client_writer)
            return
        if self._down:  # went down while connecting
            _reset(client_writer)
            _reset(up_writer)
            return
        link = (client_writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pipe(client_reader, up_writer),
                self._pipe(up_reader, client_writer),
            )
        finally:
            self._links.discard(link)
            for w in link:
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction, each chunk released ``delay`` after it was read."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE_CHUNKS)

        async def read() -> None:
            while True:
                try:
                    data = await reader.read(_CHUNK_BYTES)
                except OSError:
                    data = _EOF
                await queue.put((time.monotonic() + self._delay_s, data))
                if not data:
                    return

        async def write() -> None:
            while True:
                due, data = await queue.get()
                wait_s = due - time.monotonic()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                try:
                    if not data:
                        if writer.can_write_eof():
                            writer.write_eof()
                        return
                    writer.write(data)
                    await writer.drain()
                except OSError:
                    return

        reading = asyncio.ensure_future(read())
        try:
            await write()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
