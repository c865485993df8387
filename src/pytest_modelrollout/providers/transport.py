"""The model clients' HTTP: httpcore's HTTP/1.1 connections on the event loop's own sockets.

httpx's default transport reaches asyncio through anyio. For every request its connection pool
asks each idle connection whether the server closed it (``has_expired``); through anyio that
builds a dict of socket attributes and makes a ``poll`` system call per connection per request.
With 8-16 keep-alive connections per model this was a quarter of the plugin's CPU per call, and
that CPU is taken from the thread that runs the tests.

This module keeps httpcore's connections (HTTP/1.1 over h11, keep-alive) and httpx's
exceptions, keeps them in a pool of its own (:class:`_Pool`; httpcore's goes over every
connection several times per request), and replaces the network layer below them through
httpcore's public ``AsyncNetworkBackend`` interface: each connection is a non-blocking socket
that the event loop reads whenever data arrives (so an idle connection is "readable" when the
server has closed it, with no system call to find out), with ``recvmsg`` and the kernel's
receive timestamp of each read on Linux; TLS is an ``ssl.SSLObject`` on memory buffers above
it. A request's head and body leave in one write. The timestamps, and the time of each
request's first write, are what a reply's latency is measured between (:class:`WireClock`):
not the moments the event loop got round to the request and to its answer, which at
concurrency 16 lag by whatever else it and the test thread were doing. The model clients post
through :class:`AsyncioTransport`'s :meth:`~AsyncioTransport.stream_post`, without httpx's
client layer (request and response models, cookie jar, auth and redirect flows)
(bench/transport_speed.py, concurrency 16, CPU per call: ``httpx.AsyncClient`` 1.7 ms,
``stream_post`` 0.33 ms; 0.8 ms with httpcore's pool and head and body written apart). With a
fixed model latency the replies of a round arrive together and are handled one at a time, so
CPU per reply delays the next requests (not the replies' measured latency, which is timed on
the wire: :class:`WireClock`).

Used on Python 3.11+ (``asyncio.timeout``), outside Windows, when no proxy is set in
the environment; otherwise :func:`make_transport` returns None and the model client uses
``httpx.AsyncClient`` with httpx's default transport, which honours ``HTTP(S)_PROXY`` /
``ALL_PROXY``. ``MODELROLLOUT_TRANSPORT=httpx`` chooses that everywhere.

httpx itself is imported only where it is used (a proxy, a failure, a URL that is not a plain
``http(s)://host/path``): with what it imports, 0.1 s of every pytest start-up (and of every
xdist worker's) otherwise.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import os
import re
import socket
import ssl
import struct
import sys
import time
import typing
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping
from urllib.parse import urlsplit

import aiohappyeyeballs
import httpcore

if typing.TYPE_CHECKING:
    import httpx

    # what a model client sends requests with: the asyncio transport directly, or httpx's client
    HTTPClient: typing.TypeAlias = "httpx.AsyncClient | AsyncioTransport"

# asyncio.timeout; and loop.add_reader, which Windows' default (proactor) event loop lacks
SUPPORTED = sys.version_info >= (3, 11) and sys.platform != "win32"
HAPPY_EYEBALLS_DELAY_S = 0.25  # RFC 8305's recommended connection attempt delay

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")
TRANSPORT_ENV = "MODELROLLOUT_TRANSPORT"  # "httpx": httpx's default transport everywhere


class WireClock:
    """What the transport measured of the request sent while it is current (:data:`WIRE_CLOCK`),
    so that a model client measures a reply's latency the same at any concurrency: from when the
    request went out to when its answer came in, nothing else.

    ``sent``: ``perf_counter`` time of the request's first write to a connection, or None (httpx's
    transport, behind a proxy, does not say; the client's own time of sending counts then).
    Between the client deciding to send and the bytes leaving there may be a connection to open
    and, in a concurrent run, other replies to handle or the test thread holding the GIL.

    ``arrived``: ``perf_counter`` time at which the last bytes read for it reached this machine
    (the kernel's receive timestamp on Linux), or None. The latency ends there, not when the
    event loop got round to reading them: with 16 replies arriving together, the last one waits
    for the other 15 to be handled.

    ``seconds``: time spent opening the connections it went out on (TCP connect and TLS
    handshake, each one that succeeded); ``before_send`` the part of it before ``sent``. The
    rest (a connection reopened after the first write failed) is left out of the latency. A run
    at concurrency *c* opens up to *c* connections per model in its first round where a
    sequential run opens one, and a TLS handshake to a distant provider takes two or three round
    trips: counted, they would put the first round's requests in the p95 of a concurrent run.

    Timed from the client's decision to send to the event loop's read instead, the p95 latency
    of a suite prefetched at concurrency 16 against a fixed 100 ms was 110-135 ms where the same
    suite run sequentially had 103 ms; timed on the wire both are 102-104 ms
    (bench/throughput.py prints the two runs' p50 and p95).
    """

    __slots__ = ("_since", "arrived", "before_send", "seconds", "sent")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.before_send = 0.0
        self.sent: float | None = None
        self.arrived: float | None = None
        self._since: float | None = None


WIRE_CLOCK: contextvars.ContextVar[WireClock | None] = contextvars.ContextVar(
    "modelrollout_wire_clock", default=None
)
# httpcore's trace events that open a connection ("<logger>.<step>.<phase>")
_SETUP_STEPS = ("connection.connect_tcp", "connection.connect_unix_socket",
                "connection.start_tls", "proxy.start_tls")  # fmt: skip
_SETUP_STARTED = frozenset(f"{step}.started" for step in _SETUP_STEPS)
_SETUP_DONE = frozenset(f"{step}.{end}" for step in _SETUP_STEPS for end in ("complete", "failed"))


async def trace_setup(name: str, info: Mapping[str, typing.Any]) -> None:
    """httpcore's ``trace`` extension: adds connection set-up time to :data:`WIRE_CLOCK`."""
    if name in _SETUP_STARTED:
        clock = WIRE_CLOCK.get()
        if clock is not None:
            clock._since = time.perf_counter()
    elif name in _SETUP_DONE:
        clock = WIRE_CLOCK.get()
        if clock is not None and clock._since is not None:
            if name.endswith(".complete"):  # a failed attempt's wait stays in the latency
                took = time.perf_counter() - clock._since
                clock.seconds += took
                if clock.sent is None:
                    clock.before_send += took
            clock._since = None


def _exc_map() -> tuple[tuple[type[Exception], type[httpx.HTTPError]], ...]:
    """httpcore exception -> httpx exception, most specific first (httpx's own transport maps
    the same)."""
    import httpx

    return (
        (httpcore.ConnectTimeout, httpx.ConnectTimeout),
        (httpcore.ReadTimeout, httpx.ReadTimeout),
        (httpcore.WriteTimeout, httpx.WriteTimeout),
        (httpcore.PoolTimeout, httpx.PoolTimeout),
        (httpcore.TimeoutException, httpx.TimeoutException),
        (httpcore.ConnectError, httpx.ConnectError),
        (httpcore.ReadError, httpx.ReadError),
        (httpcore.WriteError, httpx.WriteError),
        (httpcore.NetworkError, httpx.NetworkError),
        (httpcore.ProxyError, httpx.ProxyError),
        (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
        (httpcore.LocalProtocolError, httpx.LocalProtocolError),
        (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
        (httpcore.ProtocolError, httpx.ProtocolError),
    )


def _decoding_error(message: str) -> Exception:
    import httpx

    return httpx.DecodingError(message)


def default_ssl_context() -> ssl.SSLContext:
    """A verifying TLS context as httpx builds by default: the CA bundle in ``SSL_CERT_FILE``
    or ``SSL_CERT_DIR`` when set, certifi's otherwise."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def proxy_in_env(environ: Mapping[str, str] | None = None) -> bool:
    """True when a proxy variable httpx would honour is set (any case)."""
    env = os.environ if environ is None else environ
    return any(env.get(name) or env.get(name.upper()) for name in _PROXY_VARS)


def make_transport(
    *,
    verify: ssl.SSLContext | bool,
    max_connections: int,
    trust_env: bool,
    environ: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> AsyncioTransport | None:
    """The asyncio transport, or None where httpx's default transport is used instead: before
    Python 3.11, where a proxy is set, or with ``MODELROLLOUT_TRANSPORT=httpx``."""
    env = os.environ if environ is None else environ
    if env.get(TRANSPORT_ENV, "").strip().lower() == "httpx":
        return None
    if not SUPPORTED or (trust_env and proxy_in_env(env)):
        return None
    return AsyncioTransport(verify=verify, max_connections=max_connections, timeout=timeout)


async def _resolve(host: str, port: int) -> list[tuple[typing.Any, ...]]:
    """``getaddrinfo`` for a TCP connection: at once for an IP address, in a thread otherwise
    (as asyncio resolves)."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:  # a name, not an address
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"getaddrinfo() returned no address for {host}")
    return infos


def _within(timeout: float | None) -> str:
    # the system's own timeouts (ETIMEDOUT is a TimeoutError too) come without ours
    return f"within {timeout:g} s" if timeout is not None else "(the system's timeout)"


@contextlib.contextmanager
def _mapped() -> typing.Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core, mapped in _exc_map():
            if isinstance(exc, core):
                raise mapped(str(exc)) from exc
        raise


# the kernel's receive timestamp of each read (Linux): a reply's latency ends when its last bytes
# reached this machine, not when the event loop got round to reading them
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35) if sys.platform == "linux" else None
_TIMESPEC = struct.Struct("@ll")  # struct timespec, as SO_TIMESTAMPNS delivers it
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size) if _SO_TIMESTAMPNS is not None else 0
READ_SIZE = 65536
HIGH_WATER = 1 << 20  # buffered bytes nobody has read yet: stop reading the socket above this


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> float:
    """``perf_counter`` time at which the bytes just read arrived: the kernel's timestamp of
    their last packet when there is one, now otherwise."""
    now = time.perf_counter()
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            waited: float = time.time() - (sec + nsec * 1e-9)  # the stamp is wall-clock time
            if 0.0 <= waited < 60.0:  # else the clock was set meanwhile: no correction
                return now - waited
    return now


class _Wire:
    """A connected non-blocking socket, read whenever data arrives (as asyncio's own transports
    do) so that a server's close of an idle connection is seen without a system call, but with
    ``recvmsg`` and the kernel's receive timestamp of every read."""

    __slots__ = ("_loop", "_reading", "_stamped", "_waiter", "arrived", "buffer", "eof", "error",
                 "fd", "sock")  # fmt: skip

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self.buffer = bytearray()
        self.eof = False
        self.error: OSError | None = None
        self.arrived = 0.0  # perf_counter when the newest buffered bytes arrived
        self._waiter: asyncio.Future[None] | None = None
        self._stamped = False
        if _SO_TIMESTAMPNS is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                self._stamped = True
            except OSError:
                pass
        self._reading = False
        self._resume()

    def _resume(self) -> None:
        if not self._reading and not self.eof and self.error is None:
            self._loop.add_reader(self.fd, self._on_readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.fd)
            self._reading = False

    def _on_readable(self) -> None:
        try:
            if self._stamped:
                data, ancillary, _, _ = self.sock.recvmsg(READ_SIZE, _ANCILLARY)
                arrived = _arrival(ancillary)
            else:
                data = self.sock.recv(READ_SIZE)
                arrived = time.perf_counter()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.error = exc
            self._pause()
        else:
            if data:
                self.buffer += data
                self.arrived = arrived
                if len(self.buffer) >= HIGH_WATER:
                    self._pause()
            else:
                self.eof = True
                self._pause()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of what arrived; b"" once the peer has closed."""
        while not self.buffer:
            if self.error is not None:
                raise self.error
            if self.eof:
                return b""
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if len(self.buffer) <= max_bytes:
            data = bytes(self.buffer)
            self.buffer.clear()
        else:
            data = bytes(self.buffer[:max_bytes])
            del self.buffer[:max_bytes]
        if not self._reading and len(self.buffer) < HIGH_WATER:
            self._resume()
        return data

    async def sendall(self, data: bytes) -> None:
        await self._loop.sock_sendall(self.sock, data)

    def close(self) -> None:
        self._pause()
        self.eof = True
        self.sock.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


_NO_BIO = ssl.MemoryBIO()
_BODY_FOLLOWS = re.compile(rb"\r\n(?:content-length:[ \t]*0*[1-9]|transfer-encoding:)", re.IGNORECASE)


def _has_body(data: bytes) -> bool:
    """Whether ``data`` is a request's head (its headers, up to the blank line) announcing a
    body: held so that head and body leave in one write (one segment for the server to read,
    one system call) rather than two."""
    return data.endswith(b"\r\n\r\n") and _BODY_FOLLOWS.search(data) is not None


class _Stream(httpcore.AsyncNetworkStream):
    """A connection for httpcore: plain TCP on a :class:`_Wire`, or TLS through an
    ``ssl.SSLObject`` on memory buffers above it. Each read that returns bytes sets
    :attr:`WireClock.arrived` of the request it serves."""

    __slots__ = ("_ahead", "_held", "_incoming", "_outgoing", "_plain", "_tls", "_wire")

    def __init__(self, wire: _Wire) -> None:
        self._wire = wire
        # opened ahead with TLS: (id of the context, server name) that start_tls must match
        self._ahead: tuple[int, str | None] | None = None
        self._tls: ssl.SSLObject | None = None
        self._incoming = self._outgoing = _NO_BIO  # TLS's, from start_tls
        self._plain = b""  # decrypted bytes read ahead (an idle connection's readability check)
        self._held = b""  # a request's head, sent with the first bytes of its body

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._held:  # never wait for an answer to bytes not sent
            held, self._held = self._held, b""
            await self._send(held, timeout)
        try:
            async with asyncio.timeout(timeout):  # type: ignore[attr-defined,unused-ignore]
                data = await (self._wire.recv(max_bytes) if self._tls is None
                              else self._tls_read(max_bytes))  # fmt: skip
        except TimeoutError:
            raise httpcore.ReadTimeout(f"no data {_within(timeout)}") from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc
        except ssl.SSLError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc
        if data:
            clock = WIRE_CLOCK.get()
            if clock is not None:
                clock.arrived = self._wire.arrived
        return data

    async def _tls_read(self, max_bytes: int) -> bytes:
        assert self._tls is not None
        if self._plain:
            data, self._plain = self._plain[:max_bytes], self._plain[max_bytes:]
            return data
        while True:
            try:
                return self._tls.read(max_bytes)
            except ssl.SSLWantReadError:
                await self._flush()  # a post-handshake message may want an answer
                raw = await self._wire.recv(READ_SIZE)
                if raw:
                    self._incoming.write(raw)
                else:
                    self._incoming.write_eof()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # the peer's close_notify, or a close without one (common, and harmless
                # for HTTP/1.1 with Content-Length or chunked bodies: h11 sees a short body)
                return b""

    async def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending:
            await self._wire.sendall(pending)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._held:
            buffer, self._held = self._held + buffer, b""
        elif _has_body(buffer):
            self._held = buffer
            return
        await self._send(buffer, timeout)

    async def _send(self, buffer: bytes, timeout: float | None) -> None:
        clock = WIRE_CLOCK.get()
        if clock is not None and clock.sent is None:
            clock.sent = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):  # type: ignore[attr-defined,unused-ignore]
                if self._tls is None:
                    await self._wire.sendall(buffer)
                else:
                    self._tls.write(buffer)
                    await self._flush()
        except TimeoutError:
            raise httpcore.WriteTimeout(f"could not send {_within(timeout)}") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        # no TLS close_notify exchange (httpcore on anyio skips it too): a server that never
        # answers it would hold every connection's close
        self._wire.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:  # opened ahead (AsyncioBackend.open_ahead): TLS is up already
            if ahead == (id(ssl_context), server_hostname):
                return self
            self._wire.close()
            raise httpcore.ConnectError("a connection opened ahead does not match its request")
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        try:
            tls = ssl_context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
            self._incoming, self._outgoing = incoming, outgoing
            async with asyncio.timeout(timeout):  # type: ignore[attr-defined,unused-ignore]
                while True:
                    try:
                        tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        await self._flush()
                        raw = await self._wire.recv(READ_SIZE)
                        if not raw:
                            raise ConnectionResetError("the server closed the connection "
                                                       "during the TLS handshake") from None
                        incoming.write(raw)
                await self._flush()
        except TimeoutError:
            self._wire.close()
            raise httpcore.ConnectTimeout(f"TLS handshake not done {_within(timeout)}") from None
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._wire.close()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        except BaseException:  # cancelled: httpcore drops the stream without closing it
            self._wire.close()
            raise
        self._tls = tls
        return self

    def _tls_readable(self) -> bool:
        """Whether an idle TLS connection has anything to say: decrypts what arrived (a late
        session ticket is not application data; a close_notify or stray bytes are)."""
        assert self._tls is not None
        if self._plain:
            return True
        if not (self._wire.buffer or self._wire.eof or self._incoming.pending or self._tls.pending()):
            return False  # nothing arrived since the last look (httpcore asks on every request)
        if self._wire.buffer:
            self._incoming.write(bytes(self._wire.buffer))
            self._wire.buffer.clear()
        if self._wire.eof:
            self._incoming.write_eof()
        try:
            data = self._tls.read(READ_SIZE)
        except ssl.SSLWantReadError:
            return self._wire.eof
        except ssl.SSLError:  # a close without close_notify, a broken record
            return True
        self._plain += data
        return True  # bytes nobody asked for, or b"": the server's close_notify

    def get_extra_info(self, info: str) -> typing.Any:
        wire = self._wire
        if info == "is_readable":
            # read whenever data arrives: an idle connection the server closed has seen EOF
            # (or has unexpected bytes buffered); either way it must not be reused
            if wire.error is not None:
                return True
            if self._tls is not None:
                return self._tls_readable()
            return wire.eof or bool(wire.buffer)
        if info == "ssl_object":
            return self._tls
        if info == "client_addr":
            return wire.sock.getsockname()
        if info == "server_addr":
            return wire.sock.getpeername()
        if info == "socket":
            return wire.sock
        return None


def _wired(sock: socket.socket, options: Iterable[typing.Any]) -> _Stream:
    """A connected socket with ``options`` set, as a connection for httpcore; closed if that
    fails."""
    try:
        for option in options:
            sock.setsockopt(*option)
        return _Stream(_Wire(sock))
    except BaseException:
        sock.close()
        raise


class _Ahead(typing.NamedTuple):
    """A connection being opened before any request asked for it (:meth:`AsyncioBackend.open_ahead`)."""

    opening: asyncio.Task[tuple[_Stream, float] | None]  # the stream and when it was ready
    expiry: float  # seconds it may stay unused once open


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network layer on asyncio: :class:`_Stream` connections, some of them opened
    ahead of the requests that will use them (:meth:`open_ahead`)."""

    def __init__(self) -> None:
        self._ahead: dict[tuple[str, int], collections.deque[_Ahead]] = {}

    def open_ahead(
        self,
        host: str,
        port: int,
        count: int,
        *,
        tls: tuple[ssl.SSLContext, str] | None,
        timeout: float | None,
        expiry: float,
    ) -> None:
        """Start opening up to ``count`` connections to ``host:port`` (with ``tls``: the
        context and server name httpcore will ask :meth:`_Stream.start_tls` for), for the
        pool's next :meth:`connect_tcp` calls to take instead of connecting then. A connection
        a request is waiting for is taken while still opening; one unused ``expiry`` seconds
        after it opened, or that the server closed meanwhile, is closed instead. Failures are
        not reported here: the request then connects itself and reports its own."""
        queue = self._ahead.setdefault((host, port), collections.deque())
        loop = asyncio.get_running_loop()
        for _ in range(count - len(queue)):
            queue.append(_Ahead(loop.create_task(self._open(host, port, tls, timeout)), expiry))

    async def _open(
        self, host: str, port: int, tls: tuple[ssl.SSLContext, str] | None, timeout: float | None
    ) -> tuple[_Stream, float] | None:
        try:
            stream = await self._connect(host, port, timeout)
        except Exception:
            return None
        if tls is not None:
            context, server_hostname = tls
            try:
                await stream.start_tls(context, server_hostname, timeout)
            except Exception:  # it closed its socket
                return None
            stream._ahead = (id(context), server_hostname)
        return stream, time.monotonic()

    async def _take_ahead(self, host: str, port: int, deadline: float | None) -> _Stream | None:
        """A connection opened ahead to ``host:port``, waiting for one still opening until
        ``deadline`` (loop time) at most: the request's own connect timeout is not spent twice
        (on a connection opened ahead that failed, then on its own)."""
        queue = self._ahead.get((host, port))
        while queue:
            ahead = queue.popleft()
            if ahead.opening.cancelled():
                continue
            try:
                # the caller's cancellation, or its time running out, cancels the opening too
                async with asyncio.timeout_at(deadline):  # type: ignore[attr-defined,unused-ignore]
                    opened = await ahead.opening
            except TimeoutError:
                raise httpcore.ConnectTimeout(
                    f"no connection to {host}:{port} within the timeout"
                ) from None
            if opened is None:
                continue
            stream, ready_at = opened
            if time.monotonic() - ready_at > ahead.expiry or stream.get_extra_info("is_readable"):
                await stream.aclose()  # unused too long, or the server closed it
                continue
            return stream
        return None

    async def aclose(self) -> None:
        """Close the connections opened ahead that no request took."""
        pending = [ahead.opening for queue in self._ahead.values() for ahead in queue]
        self._ahead.clear()
        for task in pending:
            task.cancel()
        for opened in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(opened, tuple):
                await opened[0].aclose()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if self._ahead and local_address is None and not socket_options:
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            stream = await self._take_ahead(host, port, deadline)
            if stream is not None:
                return stream
            if deadline is not None:  # what is left of it
                timeout = max(0.0, deadline - loop.time())
        return await self._connect(host, port, timeout, local_address, socket_options)

    async def _connect(
        self,
        host: str,
        port: int,
        timeout: float | None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> _Stream:
        try:
            async with asyncio.timeout(timeout):  # type: ignore[attr-defined,unused-ignore]
                addresses = await _resolve(host, port)
                local = await _resolve(local_address, 0) if local_address else None
                # like anyio: try the next address (IPv4 after a dead IPv6 route) after 250 ms
                # instead of waiting for the connect timeout. aiohappyeyeballs (aiohttp's), not
                # asyncio's own: on Python 3.11 a connect cancelled at the wrong moment (a
                # timeout, the end of a session) left its socket open to the garbage collector
                sock = await aiohappyeyeballs.start_connection(
                    addresses, local_addr_infos=local, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY_S
                )
            nodelay = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return _wired(sock, [nodelay, *(socket_options or ())])
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection to {host}:{port} {_within(timeout)}") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                async with asyncio.timeout(timeout):  # type: ignore[attr-defined,unused-ignore]
                    await asyncio.get_running_loop().sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
            return _wired(sock, socket_options or ())
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection to {path} {_within(timeout)}") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _Pool:
    """Keep-alive HTTP/1.1 connections (httpcore's ``AsyncHTTPConnection``: connect through
    the backend, TLS, h11), at most ``max_connections`` open or opening, handed out one request
    at a time.

    What httpcore's ``AsyncConnectionPool`` does for one event loop, in O(1) per request: that
    pool goes over every connection several times per request (its check for surplus idle
    connections is quadratic), and a run's replies arrive in bursts of as many as it has
    connections (400 calls at concurrency 16, 100 ms each: 2.59-2.60 s through this pool,
    2.56 s on connections used directly, 2.59-2.65 s through httpcore's pool). An idle
    connection is reused newest first (the warmest; the oldest are left to expire); one that
    has expired or that the server closed (readable while idle) is closed instead. At the
    limit, an idle connection to another origin is closed to make room, as httpcore's pool
    does; otherwise the request waits for one to come back (first come, first served), at
    most its ``pool`` timeout."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        max_connections: int,
        keepalive_expiry: float,
        backend: httpcore.AsyncNetworkBackend,
    ) -> None:
        self._ssl_context = ssl_context
        self._max = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._backend = backend
        # open or opening, idle or not: each with its origin's (scheme, host, port)
        self._origins: dict[httpcore.AsyncHTTPConnection, tuple[bytes, bytes, int]] = {}
        self._idle: dict[tuple[bytes, bytes, int], list[httpcore.AsyncHTTPConnection]] = {}
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def checkout(
        self, origin: httpcore.Origin, timeout: float | None
    ) -> httpcore.AsyncHTTPConnection:
        """A connection to ``origin`` for one request: an idle one, a new one (not connected
        yet: its first request connects it), or the first to come back within ``timeout``."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        key = (origin.scheme, origin.host, origin.port)
        woken = False
        while True:
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()
                if conn.is_closed() or conn.has_expired():
                    await self._discard(conn)
                    continue
                return conn
            if len(self._origins) >= self._max:
                other = next((cs.pop(0) for cs in self._idle.values() if cs), None)
                if other is not None:
                    await self._discard(other)
            if len(self._origins) < self._max:
                conn = httpcore.AsyncHTTPConnection(
                    origin,
                    ssl_context=self._ssl_context,
                    keepalive_expiry=self._keepalive_expiry,
                    http1=True,
                    http2=False,
                    network_backend=self._backend,
                )
                self._origins[conn] = key
                return conn
            waiter = asyncio.get_running_loop().create_future()
            # woken before but beaten to the connection by a newcomer: first in line again
            (self._waiters.appendleft if woken else self._waiters.append)(waiter)
            try:
                async with asyncio.timeout_at(deadline):  # type: ignore[attr-defined,unused-ignore]
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, but leaving: the next in line takes the turn
                else:
                    waiter.cancel()
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise httpcore.PoolTimeout(
                        f"no connection came free {_within(timeout)}"
                    ) from None
                raise
            woken = True

    async def checkin(self, conn: httpcore.AsyncHTTPConnection) -> None:
        """``conn`` after its request (its response closed): kept if it can take another."""
        key = self._origins.get(conn)
        if key is not None and conn.is_idle() and not conn.is_closed():
            self._idle.setdefault(key, []).append(conn)
            self._wake()
        else:
            await self._discard(conn)

    @property
    def connections(self) -> list[httpcore.AsyncHTTPConnection]:
        """The connections open or opening, idle or not."""
        return list(self._origins)

    async def _discard(self, conn: httpcore.AsyncHTTPConnection) -> None:
        self._origins.pop(conn, None)
        self._wake()
        await conn.aclose()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        connections = list(self._origins)
        self._origins.clear()
        self._idle.clear()
        for conn in connections:
            await conn.aclose()


class AsyncioTransport:
    """httpcore's HTTP/1.1 connections in a :class:`_Pool` on :class:`AsyncioBackend`, posted
    to with :meth:`stream_post`: one per model client."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool,
        max_connections: int,
        keepalive_expiry: float = 5.0,
        timeout: float | None = None,
    ) -> None:
        self.timeout = timeout  # connect, read, write and pool timeout of every request
        self._targets: dict[str, tuple[httpcore.URL, bytes]] = {}
        if isinstance(verify, ssl.SSLContext):
            context = verify
        elif verify:
            context = default_ssl_context()
        else:
            # no verification: no CA bundle to load (create_default_context() reads the
            # system's, ~50 ms per client, for a context plain-HTTP loopback clients never use)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        # what httpcore sets on the context of each connection it opens itself, set before a
        # connection is opened ahead of it
        context.set_alpn_protocols(["http/1.1"])
        self._context = context
        self._keepalive_expiry = keepalive_expiry
        self._backend = AsyncioBackend()
        self._pool = _Pool(
            ssl_context=context,
            max_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
            backend=self._backend,
        )

    def preconnect(self, url: str, count: int) -> bool:
        """Start opening ``count`` connections (TCP, and TLS for ``https``) to ``url``'s origin
        in the background, for the next requests to use instead of opening their own: while a
        run collects its tests, so that the first round of calls goes out at once. Like the
        pool's own, a connection left unused ``keepalive_expiry`` seconds is closed, not used.
        The connections the pool already has to that origin count (requests that started
        before this ran opened their own: as many fewer are opened ahead). False for a URL
        that is not a plain ``http(s)://host[:port]/...`` (nothing opened)."""
        parts = _plain_url(url)
        if parts is None or count <= 0:
            return False
        scheme, host, port, _ = parts
        name = host.decode("ascii")
        port = port or _DEFAULT_PORTS[scheme.decode("ascii")]
        origin = httpcore.Origin(scheme, host, port)
        count -= sum(1 for c in self._pool.connections if c.can_handle_request(origin))
        tls = (self._context, name) if scheme == b"https" else None
        self._backend.open_ahead(
            name, port, count, tls=tls, timeout=self.timeout, expiry=self._keepalive_expiry
        )
        return True

    async def aclose(self) -> None:
        await self._pool.aclose()
        await self._backend.aclose()

    @contextlib.asynccontextmanager
    async def stream_post(
        self, url: str, content: bytes, headers: Mapping[str, str]
    ) -> AsyncIterator[tuple[int, dict[str, str], AsyncIterator[bytes]]]:
        """POST ``content``; yield the status, the headers (lower-case names, repeated ones
        joined with ", " as httpx joins them) and the body's chunks (gzip / deflate decoded).

        Failures raise httpx's exceptions, as ``httpx.AsyncClient`` would; its request and
        response models, cookie jar, auth and redirect flows are left out (the model clients
        need none of them), which halves the CPU per call (bench/transport_speed.py).
        """
        target, host = self._target(url)
        raw = [
            (b"host", host),
            (b"accept", b"*/*"),
            (b"content-length", str(len(content)).encode("ascii")),
            *((k.encode("ascii"), v.encode("ascii")) for k, v in headers.items()),
        ]
        t = self.timeout
        ext = {"timeout": {"connect": t, "read": t, "write": t, "pool": t}, "trace": trace_setup}
        request = httpcore.Request("POST", target, headers=raw, content=content, extensions=ext)
        with _mapped():
            while True:
                conn = await self._pool.checkout(target.origin, t)
                try:
                    resp = await conn.handle_async_request(request)
                except httpcore.ConnectionNotAvailable:  # it closed meanwhile: another
                    await self._pool.checkin(conn)
                    continue
                except BaseException:
                    await self._pool.checkin(conn)  # closed by the failure: let go
                    raise
                break
            try:
                hdrs = _header_dict(resp.headers)
                encoding = hdrs.get("content-encoding", "").strip().lower()
                yield resp.status, hdrs, _decoded(resp.aiter_stream(), encoding)
            finally:
                try:
                    await resp.aclose()
                finally:
                    await self._pool.checkin(conn)

    def _target(self, url: str) -> tuple[httpcore.URL, bytes]:
        found = self._targets.get(url)
        if found is None:
            found = self._targets[url] = _parse_target(url)
        return found


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _parse_target(url: str) -> tuple[httpcore.URL, bytes]:
    """The request target and the ``Host`` header of ``url``, as httpx sends them.

    A plain ``http(s)://host[:port]/path[?query]`` URL (every provider's) is split here;
    anything else (international host names, characters to percent-encode, dot segments, other
    schemes, odd ports) is left to httpx's URL, so that it is sent exactly as before.
    """
    parts = _plain_url(url)
    if parts is None:
        import httpx

        u = httpx.URL(url)
        url_ = httpcore.URL(scheme=u.raw_scheme, host=u.raw_host, port=u.port, target=u.raw_path)
        return url_, u.netloc
    scheme, host, port, target = parts
    netloc = b"[" + host + b"]" if b":" in host else host
    if port is not None:
        netloc += b":%d" % port
    return httpcore.URL(scheme=scheme, host=host, port=port, target=target), netloc


def _plain_url(url: str) -> tuple[bytes, bytes, int | None, bytes] | None:
    if not url.isascii() or "/." in url or url.endswith("?"):
        return None
    if any(c in url for c in ' <>\\"{}|^`%'):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default is None or not parts.hostname or (port is not None and not 0 < port < 65536):
        return None
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    return (
        scheme.encode("ascii"),
        parts.hostname.encode("ascii"),
        None if port == default else port,
        target.encode("ascii"),
    )


def _header_dict(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in raw:
        key = k.decode("latin-1").lower()
        value = v.decode("latin-1")
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


async def _decoded(chunks: typing.AsyncIterable[bytes], encoding: str) -> AsyncIterator[bytes]:
    """The body as sent, or decoded: no Accept-Encoding is sent, but a server may compress
    anyway."""
    if encoding in ("", "identity"):
        decoder = None
    elif encoding in ("gzip", "x-gzip"):
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        decoder = zlib.decompressobj()
    else:
        raise _decoding_error(f"unsupported content-encoding {encoding!r}")
    with _mapped():
        async for chunk in chunks:
            if decoder is None:
                yield chunk
                continue
            try:
                yield decoder.decompress(chunk)
            except zlib.error as exc:
                raise _decoding_error(f"{encoding} body: {exc}") from None
    if decoder is not None:
        try:
            tail = decoder.flush()
        except zlib.error as exc:
            raise _decoding_error(f"{encoding} body: {exc}") from None
        if tail:
            yield tail
