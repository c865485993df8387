"""The model clients' HTTP: httpcore's connection pool on plain asyncio streams.

httpx's default transport reaches asyncio through anyio. For every request its connection pool
asks each idle connection whether the server closed it (``has_expired``); through anyio that
builds a dict of socket attributes and makes a ``poll`` system call per connection per request.
With 8-16 keep-alive connections per model this was a quarter of the plugin's CPU per call, and
that CPU is taken from the thread that runs the tests.

This module keeps httpcore (HTTP/1.1 over h11, the pool, keep-alive) and httpx's exceptions,
and replaces the network layer below them through httpcore's public ``AsyncNetworkBackend``
interface: connections are asyncio ``StreamReader``/``StreamWriter`` pairs, an idle connection is
"readable" when asyncio has already seen the server close it (no system call), TLS is
``StreamWriter.start_tls``. The model clients post through :class:`AsyncioTransport`'s
:meth:`~AsyncioTransport.stream_post`, without httpx's client layer (request and response
models, cookie jar, auth and redirect flows), which cost about as much CPU again
(bench/transport_speed.py, concurrency 16: ``httpx.AsyncClient`` 3.2 ms per call, the anyio
check alone ~0.8 ms of it, ``stream_post`` 1.8 ms). With a fixed model latency the replies of a
round arrive together and are handled one at a time, so CPU per reply becomes latency.

Used on Python 3.11+ (``asyncio.timeout``, ``StreamWriter.start_tls``) when no proxy is set in
the environment; otherwise :func:`make_transport` returns None and the model client uses
``httpx.AsyncClient`` with httpx's default transport, which honours ``HTTP(S)_PROXY`` /
``ALL_PROXY``. ``MODELROLLOUT_TRANSPORT=httpx`` chooses that everywhere.

httpx itself is imported only where it is used (a proxy, a failure, a URL that is not a plain
``http(s)://host/path``): with what it imports, 0.1 s of every pytest start-up (and of every
xdist worker's) otherwise.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import socket
import ssl
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

SUPPORTED = sys.version_info >= (3, 11)
HAPPY_EYEBALLS_DELAY_S = 0.25  # RFC 8305's recommended connection attempt delay

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")
TRANSPORT_ENV = "MODELROLLOUT_TRANSPORT"  # "httpx": httpx's default transport everywhere


class SetupClock:
    """Time spent opening the connections the requests sent while it is current
    (:data:`SETUP_CLOCK`) went out on: TCP connect and TLS handshake, each one that succeeded.

    A model client leaves it out of a reply's latency. A run at concurrency *c* opens up to *c*
    connections per model in its first round where a sequential run opens one, and a TLS
    handshake to a distant provider takes two or three round trips: counted, they would put the
    first round's requests in the p95 of a concurrent run, and not of a sequential one.
    """

    __slots__ = ("_since", "seconds")

    def __init__(self) -> None:
        self.seconds = 0.0
        self._since: float | None = None


SETUP_CLOCK: contextvars.ContextVar[SetupClock | None] = contextvars.ContextVar(
    "modelrollout_setup_clock", default=None
)
# httpcore's trace events that open a connection ("<logger>.<step>.<phase>")
_SETUP_STEPS = ("connection.connect_tcp", "connection.connect_unix_socket",
                "connection.start_tls", "proxy.start_tls")  # fmt: skip
_SETUP_STARTED = frozenset(f"{step}.started" for step in _SETUP_STEPS)
_SETUP_DONE = frozenset(f"{step}.{end}" for step in _SETUP_STEPS for end in ("complete", "failed"))


async def trace_setup(name: str, info: Mapping[str, typing.Any]) -> None:
    """httpcore's ``trace`` extension: adds connection set-up time to :data:`SETUP_CLOCK`."""
    if name in _SETUP_STARTED:
        clock = SETUP_CLOCK.get()
        if clock is not None:
            clock._since = time.perf_counter()
    elif name in _SETUP_DONE:
        clock = SETUP_CLOCK.get()
        if clock is not None and clock._since is not None:
            if name.endswith(".complete"):  # a failed attempt's wait stays in the latency
                clock.seconds += time.perf_counter() - clock._since
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


class _Stream(httpcore.AsyncNetworkStream):
    __slots__ = ("_reader", "_writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):  # type: ignore[attr-defined,unused-ignore]
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout(f"no data {_within(timeout)}") from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):  # type: ignore[attr-defined,unused-ignore]
                await self._writer.drain()
        except TimeoutError:
            raise httpcore.WriteTimeout(f"could not send {_within(timeout)}") from None
        except OSError as exc:
            raise httpcore.WriteError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        transport = self._writer.transport
        if transport.get_extra_info("ssl_object") is not None:
            # no TLS close_notify exchange (httpcore on anyio skips it too): asyncio would wait
            # up to 30 s for a server that never answers it, at every connection's close
            transport.abort()
            return
        self._writer.close()
        # the peer may have gone away first: the connection is closed either way
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):  # type: ignore[attr-defined,unused-ignore]
                await self._writer.start_tls(  # type: ignore[attr-defined,unused-ignore]
                    ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._writer.close()
            raise httpcore.ConnectTimeout(f"TLS handshake not done {_within(timeout)}") from None
        except (OSError, ssl.SSLError) as exc:
            self._writer.close()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return self

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            # asyncio reads whatever arrives: an idle connection the server closed has seen EOF
            # (or has unexpected bytes buffered); either way it must not be reused
            return (
                self._reader.at_eof()
                or self._writer.transport.is_closing()
                or bool(getattr(self._reader, "_buffer", b""))
            )
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "socket":
            return self._writer.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network layer on asyncio streams."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
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
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    for option in socket_options or ():
                        sock.setsockopt(*option)
                    reader, writer = await asyncio.open_connection(sock=sock)
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection to {host}:{port} {_within(timeout)}") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return _Stream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):  # type: ignore[attr-defined,unused-ignore]
                reader, writer = await asyncio.open_unix_connection(path)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection to {path} {_within(timeout)}") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return _Stream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class AsyncioTransport:
    """httpcore's HTTP/1.1 connection pool on :class:`AsyncioBackend`, posted to with
    :meth:`stream_post`: one per model client."""

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
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=AsyncioBackend(),
        )

    async def aclose(self) -> None:
        await self._pool.aclose()

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
        with _mapped():
            async with self._pool.stream(
                "POST", target, headers=raw, content=content, extensions=ext
            ) as resp:
                hdrs = _header_dict(resp.headers)
                encoding = hdrs.get("content-encoding", "").strip().lower()
                yield resp.status, hdrs, _decoded(resp.aiter_stream(), encoding)

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
