"""The model clients' HTTP (providers/transport.py), over real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import typing
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from pytest_modelrollout.providers import transport as tr

pytestmark = pytest.mark.skipif(not tr.SUPPORTED, reason="the asyncio transport needs 3.11+")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

CONNECTIONS = 4


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return await reader.readexactly(length) if length else b""


def _reply(body: bytes, *, close: bool = False) -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    if close:
        head += "connection: close\r\n"
    return head.encode() + b"\r\n" + body


async def _serve(handler: Handler, ssl_ctx: ssl.SSLContext | None = None) -> asyncio.Server:
    return await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_ctx)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one request with its own body."""
    body = await _read_request(reader)
    writer.write(_reply(body))
    await writer.drain()
    writer.close()


def _url(server: asyncio.Server, scheme: str = "http", host: str = "127.0.0.1") -> str:
    return f"{scheme}://{host}:{server.sockets[0].getsockname()[1]}/v1/x"


def _direct(timeout: float = 5.0, verify: ssl.SSLContext | bool = False) -> tr.AsyncioTransport:
    t = tr.make_transport(
        verify=verify, max_connections=CONNECTIONS, trust_env=False, timeout=timeout
    )
    assert isinstance(t, tr.AsyncioTransport)
    return t


def _tls_for(
    scheme: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> tuple[ssl.SSLContext | None, ssl.SSLContext | bool]:
    """(the server's TLS context or None, what the client verifies with) for ``scheme``."""
    return (tls[0], tls[1]) if scheme == "https" else (None, False)


@contextlib.asynccontextmanager
async def _served(
    handler: Handler,
    server_ctx: ssl.SSLContext | None = None,
    scheme: str = "http",
    host: str = "127.0.0.1",
    transport: tr.AsyncioTransport | None = None,
    **direct: typing.Any,
) -> typing.AsyncIterator[tuple[tr.AsyncioTransport, str]]:
    """A server for ``handler`` on loopback and a transport (``_direct(**direct)`` unless
    given); yields the transport and the server's URL, closes both."""
    server = await _serve(handler, server_ctx)
    t = transport or _direct(**direct)
    async with server:
        try:
            yield t, _url(server, scheme, host)
        finally:
            await t.aclose()


async def _post(
    t: tr.AsyncioTransport, url: str, body: bytes = b"{}"
) -> tuple[int, dict[str, str], bytes]:
    async with t.stream_post(url, body, {"content-type": "application/json"}) as (status, h, chunks):
        return status, h, b"".join([c async for c in chunks])


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("ahead", [False, True], ids=["on-demand", "opened-ahead"])
def test_requests_reuse_connections_and_respect_the_pool_limit(
    scheme: str, ahead: bool, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """40 requests over at most 4 kept-alive connections. With 4 opened ahead (as a run opens
    them while it collects), the requests go out on those and no others; the first, sent at
    once, takes one that is still opening."""
    server_ctx, trusting = _tls_for(scheme, tls)
    served: list[int] = []  # requests served, per connection
    active = 0
    peak = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active, peak
        n = len(served)
        served.append(0)
        try:
            while True:
                try:
                    body = await _read_request(reader)
                except asyncio.IncompleteReadError:
                    return
                served[n] += 1
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.01)
                active -= 1
                writer.write(_reply(b'{"echo": ' + body + b"}"))
                await writer.drain()
        finally:
            writer.close()

    async def main() -> list[dict[str, object]]:
        async with _served(handler, server_ctx, scheme, "localhost", verify=trusting) as (t, url):
            if ahead:
                assert t.preconnect(url, CONNECTIONS)
                assert (await _post(t, url, b'{"i": -1}'))[0] == 200
            replies = await asyncio.gather(*(_post(t, url, b'{"i": %d}' % i) for i in range(40)))
        return [json.loads(body) for _, _, body in replies]

    out = asyncio.run(main())
    assert [r["echo"] for r in out] == [{"i": i} for i in range(40)]
    assert peak <= CONNECTIONS and len(served) <= CONNECTIONS, served
    if ahead:  # every connection opened ahead served requests
        assert len(served) == CONNECTIONS and all(served), served


def test_a_request_that_gives_up_waiting_for_a_connection_leaves_it_to_the_next() -> None:
    """One connection: a request waiting for it that is cancelled (its test ended) or whose
    pool timeout runs out (httpx.PoolTimeout) leaves its turn to the next request, which goes
    out on the same kept-alive connection as soon as it is free."""
    import httpx

    connections = 0
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                body = await _read_request(reader)
                if body == b'{"i": 0}':  # the first reply is streamed until released
                    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    while not release.is_set():
                        writer.write(b"1\r\n \r\n")  # a byte at a time: no read times out
                        await writer.drain()
                        await asyncio.sleep(0.05)
                    writer.write(b"2\r\n{}\r\n0\r\n\r\n")
                else:
                    writer.write(_reply(body))
                await writer.drain()

    async def main() -> tuple[list[int], float, BaseException | None]:
        t = tr.make_transport(verify=False, max_connections=1, trust_env=False, timeout=0.3)
        assert isinstance(t, tr.AsyncioTransport)
        async with _served(handler, transport=t) as (t, url):
            first = asyncio.create_task(_post(t, url, b'{"i": 0}'))
            await asyncio.sleep(0.1)  # it holds the connection
            cancelled = asyncio.create_task(_post(t, url, b'{"i": 1}'))
            timed_out = asyncio.create_task(_post(t, url, b'{"i": 2}'))
            await asyncio.sleep(0.05)
            cancelled.cancel()
            outcome = (await asyncio.gather(timed_out, return_exceptions=True))[0]
            waited = time.perf_counter()
            last = asyncio.create_task(_post(t, url, b'{"i": 3}'))
            await asyncio.sleep(0.05)
            release.set()
            statuses = [(await first)[0], (await last)[0]]
            return statuses, time.perf_counter() - waited, outcome if isinstance(
                outcome, BaseException) else None  # fmt: skip

    statuses, took, outcome = asyncio.run(main())
    assert isinstance(outcome, httpx.PoolTimeout), outcome
    assert statuses == [200, 200]
    assert took < 0.3, took  # the last went out when the first was done, not after a timeout
    assert connections == 1


def test_the_pool_keeps_its_limit_and_loses_no_connection_to_failures_and_cancellations() -> None:
    """200 requests over at most 4 connections, while the server drops some connections
    without answering and the client cancels some requests (waiting for a connection, or in
    flight): the pool never holds more than 4 connections (a server sees the client's close of
    a connection it gave up a little after the next one opens), every other request gets its
    answer or its error, and afterwards 4 at a time still go out at once, not one after the
    other behind connections that were lost."""
    import random

    import httpx

    rng = random.Random(6)
    held: list[int] = []  # the pool's connections, open or opening, at each request's arrival
    transports: list[tr.AsyncioTransport] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    body = await _read_request(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                held.append(len(transports[0]._pool.connections))
                if b"drop" in body:
                    return  # closes the connection without an answer
                await asyncio.sleep(0.2 if b"last" in body else 0.05 if b"slow" in body else 0.005)
                writer.write(_reply(body))
                await writer.drain()
        finally:
            writer.close()

    async def main() -> tuple[dict[str, int], float]:
        outcomes = {"answered": 0, "dropped": 0, "cancelled": 0}
        async with _served(handler) as (t, url):
            transports.append(t)
            tasks = []
            for i in range(200):
                kind = rng.choice([b"fast", b"fast", b"slow", b"drop"])
                tasks.append((kind, asyncio.create_task(_post(t, url, b'"%d %s"' % (i, kind)))))
                if rng.random() < 0.3:
                    await asyncio.sleep(0.001)
                if rng.random() < 0.1:  # a request given up: waiting, or in flight
                    rng.choice(tasks)[1].cancel()
            for kind, task in tasks:
                try:
                    status, _, body = await task
                except asyncio.CancelledError:
                    outcomes["cancelled"] += 1
                except httpx.RemoteProtocolError:
                    assert kind == b"drop"
                    outcomes["dropped"] += 1
                else:
                    assert status == 200 and kind in body
                    outcomes["answered"] += 1
            started = time.perf_counter()
            await asyncio.gather(*(_post(t, url, b'"last"') for _ in range(CONNECTIONS)))
            took = time.perf_counter() - started
        await asyncio.sleep(0.05)  # the server's handlers see the connections close
        return outcomes, took

    outcomes, took = asyncio.run(main())
    assert held and max(held) <= CONNECTIONS, max(held)
    assert sum(outcomes.values()) == 200 and all(outcomes.values()), outcomes
    assert took < 0.2 * 2, took  # the four went out together: one reply's time, not four


def test_a_request_woken_for_a_connection_but_cancelled_passes_its_turn_on() -> None:
    """A connection comes free for the first request in line, which is cancelled before it
    takes it (its test ended meanwhile): the next in line takes it, not its own timeout."""
    import httpcore

    async def main() -> float:
        pool = tr._Pool(ssl_context=ssl.create_default_context(), max_connections=1,
                        keepalive_expiry=5, backend=tr.AsyncioBackend())  # fmt: skip
        origin = httpcore.Origin(b"http", b"127.0.0.1", 9)
        held = await pool.checkout(origin, None)  # never connected: nothing is sent
        first = asyncio.create_task(pool.checkout(origin, 1.0))
        second = asyncio.create_task(pool.checkout(origin, 1.0))
        await asyncio.sleep(0.01)  # both wait
        started = time.perf_counter()
        await pool.checkin(held)  # wakes the first ...
        first.cancel()  # ... which is cancelled before it runs
        taken = await second
        took = time.perf_counter() - started
        with contextlib.suppress(asyncio.CancelledError):
            await first
        await pool.checkin(taken)
        await pool.aclose()
        return took

    assert asyncio.run(main()) < 0.5


def test_a_requests_head_and_body_leave_together() -> None:
    """httpcore writes a request's head and its body separately; they go out in one write
    (one segment for the server to read, one system call on the client's side), and a head
    whose body has not been written yet is sent before the connection waits for a reply."""

    async def main() -> tuple[bytes, bytes, bytes]:
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        stream = tr._Stream(tr._Wire(ours))
        head = b"POST /v1/x HTTP/1.1\r\nhost: h\r\nContent-Length: 2\r\n\r\n"
        await stream.write(head)
        with pytest.raises(BlockingIOError):
            theirs.recv(4096)  # nothing has left yet
        await stream.write(b"{}")
        await asyncio.sleep(0.01)
        together = theirs.recv(4096)
        bodiless = b"GET /v1/models HTTP/1.1\r\nhost: h\r\n\r\n"
        await stream.write(bodiless)
        await asyncio.sleep(0.01)
        alone = theirs.recv(4096)
        await stream.write(head)  # ... and then the caller reads, its body never written
        theirs.sendall(b"HTTP/1.1 400 Bad Request\r\n")
        await stream.read(4096, timeout=1)
        flushed = theirs.recv(4096)
        await stream.aclose()
        theirs.close()
        return together, alone, flushed

    together, alone, flushed = asyncio.run(main())
    assert together == b"POST /v1/x HTTP/1.1\r\nhost: h\r\nContent-Length: 2\r\n\r\n{}"
    assert alone.startswith(b"GET /v1/models")
    assert flushed.startswith(b"POST /v1/x")


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("kept", ["idle in the pool", "opened ahead"])
def test_a_connection_the_server_closed_is_not_used(
    scheme: str, kept: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """Kept after a reply, or opened ahead of the requests (while a run collects): closed by
    the server meanwhile, it is not used; the next request opens another."""
    server_ctx, trusting = _tls_for(scheme, tls)
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        if kept == "opened ahead" and connections == 1:  # closed before any request came
            writer.close()
            return
        await _read_request(reader)
        writer.write(_reply(b"{}"))  # keep-alive reply, then the server closes anyway
        await writer.drain()
        writer.close()

    async def main() -> list[int]:
        async with _served(handler, server_ctx, scheme, "localhost", verify=trusting) as (t, url):
            statuses = []
            if kept == "opened ahead":
                assert t.preconnect(url, 1)
            else:
                statuses.append((await _post(t, url))[0])
            await asyncio.sleep(0.05)  # the close reaches the client while it idles
            statuses.append((await _post(t, url))[0])
        return statuses

    assert set(asyncio.run(main())) == {200}
    assert connections == 2


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_large_request_body_is_sent_whole(
    scheme: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """A long prompt (a document, an image as base64): more than the socket takes at once."""
    server_ctx, trusting = _tls_for(scheme, tls)
    body = json.dumps({"prompt": "长文本 long text " * 200_000}).encode()

    async def main() -> bytes:
        async with _served(_echo, server_ctx, scheme, "localhost", verify=trusting) as (t, url):
            return (await _post(t, url, body))[2]

    assert asyncio.run(main()) == body


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ("refused", httpx.ConnectError),
        ("silent", httpx.ReadTimeout),
        ("truncated", httpx.RemoteProtocolError),
        ("reset", httpx.RemoteProtocolError),
    ],
)
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_failures_surface_as_httpx_exceptions(
    behaviour: str, expected: type[Exception], scheme: str,
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, trusting = _tls_for(scheme, tls)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _read_request(reader)
            if behaviour == "silent":
                await asyncio.sleep(2)  # cancelled when the test's loop ends
            elif behaviour == "truncated":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n{\"partial\":")
                await writer.drain()
        finally:
            writer.close()

    async def main() -> None:
        server = await _serve(handler, server_ctx)
        url = _url(server, scheme, "localhost")
        if behaviour == "refused":
            server.close()
            await server.wait_closed()
        t = _direct(timeout=0.3, verify=trusting)
        try:
            await _post(t, url)
        finally:
            await t.aclose()
            server.close()

    with pytest.raises(expected):
        asyncio.run(main())


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_streamed_body_arrives_whole(
    scheme: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """3 MB, more than the transport buffers before it stops reading the socket."""
    server_ctx, trusting = _tls_for(scheme, tls)
    big = b'{"text": "' + "长文本 long text ".encode() * 150_000 + b'"}'
    assert len(big) > 2 * tr.HIGH_WATER

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(_reply(big, close=True))
        await writer.drain()
        writer.close()

    async def main() -> bytes:
        async with (
            _served(handler, server_ctx, scheme, "localhost", verify=trusting) as (t, url),
            t.stream_post(url, b"{}", {}) as (_, _, chunks),
        ):
            parts = []
            async for chunk in chunks:
                parts.append(chunk)
                await asyncio.sleep(0.001)  # a slow reader: the socket backs up
            return b"".join(parts)

    assert asyncio.run(main()) == big


def test_an_address_that_does_not_answer_costs_a_quarter_second_not_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Happy eyeballs: a name that resolves first to an address nothing answers on (a dead IPv6
    route, a stale DNS entry) connects to the next one after 250 ms, not after the connect
    timeout. Resolution is the only thing replaced (no DNS here); the connects are real."""

    # an address nothing answers on: a listener whose backlog is full drops further SYNs
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    silent_port = silent.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", silent_port))
        fillers.append(filler)

    async def main() -> tuple[bytes, float]:
        server = await _serve(_echo)
        port = server.sockets[0].getsockname()[1]

        async def resolve(host: str, port_: int) -> list[tuple[object, ...]]:
            assert host == "models.example.test"
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", silent_port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            ]

        monkeypatch.setattr(tr, "_resolve", resolve)
        t = _direct(timeout=10.0)
        async with server:
            try:
                started = time.perf_counter()
                body = (await _post(t, f"http://models.example.test:{port}/v1/x", b'{"he": 1}'))[2]
                return body, time.perf_counter() - started
            finally:
                await t.aclose()

    try:
        body, took = asyncio.run(main())
    finally:
        for sock in (*fillers, silent):
            sock.close()
    assert body == b'{"he": 1}'
    assert 0.2 <= took < 3.0, took  # 0.25 s on the silent address; the connect timeout is 10 s


def test_connecting_to_a_name_resolves_it() -> None:
    """A host name (``localhost``) is resolved before connecting, as an IP address is used as is."""

    async def main() -> bytes:
        async with _served(_echo, host="localhost") as (t, url):
            return (await _post(t, url, b'{"name": 1}'))[2]

    assert asyncio.run(main()) == b'{"name": 1}'


@pytest.fixture
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for localhost, client context trusting its CA)."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    return server_ctx, trusting


@pytest.fixture
def tls_ca_file(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """(server context with a certificate for localhost, a PEM file holding its CA)."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return server_ctx, pem


def _one_tls_connection(
    server_ctx: ssl.SSLContext, answer: Callable[[ssl.SSLSocket], None]
) -> tuple[socket.socket, threading.Event]:
    """A blocking TLS server on loopback for one connection: it reads the request, then
    ``answer(tls_socket)`` does the rest. Returns the listener and an event set when done."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        tls_sock = server_ctx.wrap_socket(conn, server_side=True)
        data = b""
        while b"\r\n\r\n" not in data:
            data += tls_sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n")
             if line.lower().startswith(b"content-length:")),
            0,
        )
        while len(body) < length:  # read it all: closing with unread bytes would send a RST
            body += tls_sock.recv(65536)
        answer(tls_sock)
        done.set()

    threading.Thread(target=serve, daemon=True).start()
    return listener, done


def test_tls_verifies_the_server_certificate(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, trusting = tls

    async def main(verify: ssl.SSLContext, host: str) -> bytes:
        async with _served(_echo, server_ctx, "https", host, verify=verify) as (t, url):
            return (await _post(t, url, b'{"tls": 1}'))[2]

    assert asyncio.run(main(trusting, "localhost")) == b'{"tls": 1}'
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(main(ssl.create_default_context(), "localhost"))  # CA not trusted
    with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
        asyncio.run(main(trusting, "127.0.0.1"))  # certificate names another host


def test_verification_uses_the_bundle_named_in_ssl_cert_file(
    tls_ca_file: tuple[ssl.SSLContext, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify=True trusts what httpx's default context trusts: certifi's bundle, or the one
    in SSL_CERT_FILE (a company's TLS-inspecting proxy CA, a private gateway)."""
    server_ctx, pem = tls_ca_file

    async def main() -> bytes:
        async with _served(_echo, server_ctx, "https", "localhost", verify=True) as (t, url):
            return (await _post(t, url, b'{"ok": 1}'))[2]

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(main())  # certifi's bundle does not hold the test CA
    monkeypatch.setenv("SSL_CERT_FILE", str(pem))
    assert asyncio.run(main()) == b'{"ok": 1}'


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/v1/chat/completions",
        "https://API.OpenAI.com:443/v1/chat/completions",
        "https://dashscope.aliyuncs.com/compatible-mode/v1/chat/completions",
        "https://h.example/openai/deployments/gpt/chat/completions?api-version=2024-10-21",
        "http://[::1]:9000/v1/x",
        "http://user:pw@host:81/p",
        "http://h",
        "http://h?x=1",
        "http://h/p#frag",
        "http://h/p?",
        "http://h/a/../b",
        "https://h/p?q=a b",
        "http://h/a%2Fb",
        "http://h/p?x=1&y=[2]",
        "https://bücher.example/v1",
        "http://h/é",
        "HTTP://H/X",
        "http://h:99999/x",
        "http://h:0/x",
        "ftp://h/x",
        "http:///x",
    ],
)
def test_request_target_and_host_header_are_what_httpx_sends(url: str) -> None:
    """The transport splits plain provider URLs itself (httpx is not imported at start-up);
    every URL still goes out with the request target and Host header httpx would send."""
    u = httpx.URL(url)
    target, host_header = tr._parse_target(url)
    assert (target.scheme, target.host, target.port, target.target, host_header) == (
        u.raw_scheme, u.raw_host, u.port, u.raw_path, u.netloc
    )


def test_loading_the_plugin_does_not_import_httpx() -> None:
    """httpx is ~30 ms of every start-up (and of every xdist worker's): the plugin imports it
    only for a proxy, a failure or an unusual URL."""
    code = "import sys, pytest_modelrollout.plugin; print('httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_proxy_in_the_environment_keeps_httpx_default_transport() -> None:
    kw = {"verify": False, "max_connections": CONNECTIONS}
    assert tr.make_transport(trust_env=True, environ={"HTTPS_PROXY": "http://p:3128"}, **kw) is None
    assert tr.make_transport(trust_env=True, environ={"all_proxy": "socks5://p"}, **kw) is None
    assert tr.make_transport(trust_env=True, environ={"HTTPS_PROXY": ""}, **kw) is not None
    # loopback clients do not read the environment (trust_env=False): no proxy applies
    assert tr.make_transport(trust_env=False, environ={"HTTPS_PROXY": "http://p"}, **kw) is not None
    # the escape hatch: httpx's own transport everywhere
    assert tr.make_transport(trust_env=False, environ={"MODELROLLOUT_TRANSPORT": "httpx"}, **kw) is None


def test_httpx_client_reads_the_proxy_variables_again_when_one_vanishes_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client behind a proxy is built on the event loop's thread; httpx reads the proxy
    variables with ``os.environ.items()``, which raises KeyError when pytest deletes
    PYTEST_CURRENT_TEST on the main thread in between. The client is built all the same."""
    import httpx._utils

    from pytest_modelrollout.providers.client import _httpx_client

    calls = []

    def getproxies() -> dict[str, str]:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("PYTEST_CURRENT_TEST")
        return {"https": "http://proxy.invalid:3128"}

    monkeypatch.setattr(httpx._utils, "getproxies", getproxies)
    client = _httpx_client(4, 5.0, False, trust_env=True)
    assert len(calls) == 2
    mounted = [str(pattern.pattern) for pattern in client._mounts]
    assert "https://" in mounted
    asyncio.run(client.aclose())


def test_remote_calls_go_through_a_proxy_set_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ModelClient for a remote provider honours HTTP(S)_PROXY: the request reaches the proxy
    in absolute form (httpx's default transport is used for it)."""
    from http.server import BaseHTTPRequestHandler

    from quiet_server import QuietHTTPServer

    from pytest_modelrollout.providers.base import ChatRequest, ModelSpec
    from pytest_modelrollout.providers.client import ModelClient
    from pytest_modelrollout.runner import Runner

    seen: list[str] = []
    reply = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hello"},
             "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }

    class Proxy(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            seen.append(self.path)
            body = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = QuietHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{httpd.server_address[1]}")
    spec = ModelSpec(ref="m", provider="openai", wire="openai", model="m",
                     base_url="http://models.example.test/v1", max_retries=0, timeout_s=5)
    client = ModelClient(spec, env={})
    try:
        with Runner() as runner:
            result = runner.run(client.call(ChatRequest(messages=[{"role": "user", "content": "hi"}])))
            runner.run(client.aclose())
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.ok and result.response is not None and result.response.text == "hello"
    assert seen == ["http://models.example.test/v1/chat/completions"]


def test_closing_a_tls_connection_does_not_wait_for_the_servers_close_notify(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """A server that never answers TLS close_notify (many do not) must not hold up the client's
    close: asyncio would wait for it up to 30 s per connection, at the end of every run."""
    server_ctx, trusting = tls
    release = threading.Event()

    def answer(tls_sock: ssl.SSLSocket) -> None:
        body = b'{"ok": true}'
        tls_sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        release.wait(30)  # reads nothing more: the client's close_notify goes unanswered
        tls_sock.close()

    listener, server_done = _one_tls_connection(server_ctx, answer)

    async def main() -> dict[str, bool]:
        t = _direct(verify=trusting)
        _, _, body = await _post(t, f"https://localhost:{listener.getsockname()[1]}/")
        await t.aclose()
        return dict(json.loads(body))

    try:
        assert asyncio.run(main()) == {"ok": True}
        # the client closed while the server still held its end open
        assert not server_done.is_set()
    finally:
        release.set()
        listener.close()


@pytest.mark.parametrize("ending", ["close-delimited", "truncated"])
def test_a_tls_server_closing_without_close_notify(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], ending: str
) -> None:
    """A ragged TLS end (TCP closed, no close_notify) ends a close-delimited body and is a
    protocol error for a body shorter than its content-length, as with httpx's own transport."""
    server_ctx, trusting = tls
    body = b'{"text": "' + "文本 text ".encode() * 5000 + b'"}'

    def answer(tls_sock: ssl.SSLSocket) -> None:
        if ending == "close-delimited":
            tls_sock.sendall(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + body)
        else:
            head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (len(body) + 100)
            tls_sock.sendall(head + body)
        tls_sock.close()  # closes the socket without a close_notify

    listener, _ = _one_tls_connection(server_ctx, answer)

    async def main() -> bytes:
        t = _direct(verify=trusting)
        try:
            return (await _post(t, f"https://localhost:{listener.getsockname()[1]}/"))[2]
        finally:
            await t.aclose()

    try:
        if ending == "close-delimited":
            assert asyncio.run(main()) == body
        else:
            with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
                asyncio.run(main())
    finally:
        listener.close()


@pytest.mark.parametrize("encoding", ["identity", "gzip", "deflate"])
def test_stream_post_returns_status_headers_and_the_decoded_body(encoding: str) -> None:
    import gzip
    import zlib

    text = '{"text": "你好 hello"}'.encode() * 200
    packed = {"identity": text, "gzip": gzip.compress(text), "deflate": zlib.compress(text)}[encoding]
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        writer.write(
            b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n"
            b"X-Request-Id: a\r\nx-request-id: b\r\nContent-Encoding: "
            + encoding.encode() + b"\r\ncontent-length: %d\r\n\r\n" % len(packed) + packed
        )
        await writer.drain()
        writer.close()

    async def main() -> tuple[int, dict[str, str], bytes]:
        async with _served(handler) as (t, url):
            return await _post(t, url, b'{"q": 1}')

    status, headers, body = asyncio.run(main())
    assert status == 201 and body == text and seen == [b'{"q": 1}']
    # names in lower case, repeated ones joined as httpx joins them
    assert headers["x-request-id"] == "a, b" and headers["content-type"] == "application/json"


def test_stream_post_refuses_an_encoding_it_cannot_decode() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\ncontent-length: 3\r\n\r\nabc")
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with _served(handler) as (t, url):
            await _post(t, url)

    with pytest.raises(httpx.DecodingError, match="br"):
        asyncio.run(main())


def _completion(text: str) -> bytes:
    return json.dumps({
        "id": "c-1", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }).encode()  # fmt: skip


def _keep_alive_server(
    server_ctx: ssl.SSLContext | None, replies: int, reply_s: float, handshake_s: float = 0.0
) -> tuple[socket.socket, threading.Thread]:
    """A blocking server on loopback, in a thread of its own (it keeps time while the client's
    event loop is busy): one connection, ``replies`` requests on it, each answered after
    ``reply_s``; TLS with ``server_ctx``, whose handshake waits ``handshake_s`` first."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        time.sleep(handshake_s)  # a distant server: the handshake's round trips
        with conn if server_ctx is None else server_ctx.wrap_socket(conn, server_side=True) as c:
            data = b""
            for n in range(replies):
                while b"\r\n\r\n" not in data:
                    data += c.recv(65536)
                head, _, data = data.partition(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))  # fmt: skip
                while len(data) < length:
                    data += c.recv(65536)
                data = data[length:]
                time.sleep(reply_s)
                c.sendall(_reply(_completion(f"reply {n}")))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    return listener, server


def _model_at(
    monkeypatch: pytest.MonkeyPatch, port: int, *, pem: Path | None, transport: str = "asyncio"
) -> tuple[typing.Any, typing.Any]:
    """(a ModelClient for the server on ``port``, https trusting ``pem`` or plain http; the
    request to send it)."""
    from pytest_modelrollout.providers import client as client_mod
    from pytest_modelrollout.providers.base import ChatRequest, ModelSpec

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    if transport == "httpx":
        monkeypatch.setenv(tr.TRANSPORT_ENV, "httpx")
    else:
        monkeypatch.delenv(tr.TRANSPORT_ENV, raising=False)
    if pem is not None:
        monkeypatch.setenv("SSL_CERT_FILE", str(pem))
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        client_mod._ssl_context.cache_clear()  # read SSL_CERT_FILE now
    base = f"https://localhost:{port}/v1" if pem is not None else f"http://127.0.0.1:{port}/v1"
    spec = ModelSpec(ref="far", provider="openai", wire="openai", model="m", base_url=base,
                     api_key_env="FAR_KEY", max_retries=0, timeout_s=10)  # fmt: skip
    model = client_mod.ModelClient(spec, env={"FAR_KEY": "k"}, killed=set())
    return model, ChatRequest(messages=[{"role": "user", "content": "hi"}])


def _timed_calls(
    model: typing.Any, request: typing.Any, listener: socket.socket, server: threading.Thread,
    *, calls: int = 2, before: Callable[[int], Awaitable[None]] | None = None,
) -> list[tuple[typing.Any, float]]:
    """Calls ``model`` ``calls`` times, awaiting ``before(n)`` (in the event loop) before call
    ``n``; each call's result and wall time. Closes the model, the listener and the server
    thread."""
    from pytest_modelrollout.providers import client as client_mod

    async def main() -> list[tuple[typing.Any, float]]:
        out = []
        try:
            for n in range(calls):
                if before is not None:
                    await before(n)
                started = time.perf_counter()
                result = await model.call(request)
                out.append((result, time.perf_counter() - started))
            return out
        finally:
            await model.aclose()

    try:
        return asyncio.run(main())
    finally:
        listener.close()
        server.join(5)
        client_mod._ssl_context.cache_clear()


@pytest.mark.parametrize("transport", ["asyncio", "httpx"])
def test_opening_a_connection_is_not_part_of_a_replys_latency(
    tls_ca_file: tuple[ssl.SSLContext, Path], monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    """A run at concurrency 16 opens 16 connections per model where a sequential run opens one;
    with a distant provider each TLS handshake is a few round trips. The first round's replies
    must not carry them, or the concurrent run's p95 is not the sequential run's."""
    server_ctx, pem = tls_ca_file
    handshake_s, reply_s = 0.6, 0.05
    listener, server = _keep_alive_server(server_ctx, 2, reply_s, handshake_s)
    model, request = _model_at(monkeypatch, listener.getsockname()[1], pem=pem,
                               transport=transport)  # fmt: skip

    (first, wall), (second, _) = _timed_calls(model, request, listener, server)
    assert first.ok and second.ok, (first.error, second.error)
    assert first.response is not None and first.response.text == "reply 0"
    assert wall >= handshake_s  # the handshake was waited for ...
    assert reply_s * 1000 <= first.latency_ms < handshake_s * 1000, first.latency_ms  # ... not here
    assert reply_s * 1000 <= second.latency_ms < handshake_s * 1000, second.latency_ms


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel's receive timestamps: Linux")
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_replys_latency_ends_when_it_arrived_not_when_a_busy_client_read_it(
    tls_ca_file: tuple[ssl.SSLContext, Path], monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    """At concurrency 16 the replies of a round arrive together and are handled one at a time,
    while the test thread takes the GIL in between: the last one is read well after it came
    in. Its latency must end when it came in, as in a sequential run. Here the event loop is
    busy for 0.4 s while a 50 ms reply arrives."""
    server_ctx, pem = tls_ca_file
    reply_s, busy_s = 0.05, 0.4
    listener, server = _keep_alive_server(server_ctx if scheme == "https" else None, 2, reply_s)
    model, request = _model_at(monkeypatch, listener.getsockname()[1],
                               pem=pem if scheme == "https" else None)  # fmt: skip

    async def block_the_loop(n: int) -> None:
        if n:
            asyncio.get_running_loop().call_later(0.01, time.sleep, busy_s)

    # the first call opens the connection: only the second one's reply is timed
    (warm, _), (busy, wall) = _timed_calls(model, request, listener, server, before=block_the_loop)
    assert warm.ok and busy.ok, (warm.error, busy.error)
    assert busy.response is not None and busy.response.text == "reply 1"
    assert wall >= busy_s  # the reply was read after the loop was free again ...
    assert reply_s * 1000 <= busy.latency_ms < busy_s * 1000 * 0.75, busy.latency_ms  # ... not here


def test_a_request_waiting_for_a_connection_is_timed_from_when_it_went_out() -> None:
    """Latency runs from when a request's first bytes are written: a request that waited for a
    free connection (or for a busy event loop) does not count the wait."""
    reply_s = 0.1

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await _read_request(reader)
                await asyncio.sleep(reply_s)
                writer.write(_reply(b"{}"))
                await writer.drain()

    async def timed(t: tr.AsyncioTransport, url: str) -> tr.WireClock:
        clock = tr.WireClock()
        token = tr.WIRE_CLOCK.set(clock)
        try:
            await _post(t, url)
        finally:
            tr.WIRE_CLOCK.reset(token)
        return clock

    async def main() -> tuple[tr.WireClock, tr.WireClock]:
        server = await _serve(slow)
        t = tr.make_transport(verify=False, max_connections=1, trust_env=False, timeout=5)
        assert isinstance(t, tr.AsyncioTransport)
        async with server:
            try:
                first, second = await asyncio.gather(timed(t, _url(server)), timed(t, _url(server)))
            finally:
                await t.aclose()
        return first, second

    first, second = asyncio.run(main())
    assert first.sent is not None and second.sent is not None
    assert first.arrived is not None and second.arrived is not None
    assert second.sent - first.sent >= reply_s * 0.9  # it went out when the connection was free
    for clock in (first, second):
        assert reply_s * 0.9 <= clock.arrived - clock.sent < reply_s * 1.9


# -- connections opened ahead (while a run collects its tests) -------------------------------
def test_a_connection_opened_ahead_and_unused_past_the_keep_alive_expiry_is_closed_not_used() -> None:
    ended: list[bool] = []  # per connection: the client closed it before sending anything

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = len(ended)
        ended.append(False)
        try:
            body = await _read_request(reader)
        except asyncio.IncompleteReadError as exc:
            ended[n] = exc.partial == b""
            writer.close()
            return
        writer.write(_reply(body))
        await writer.drain()
        writer.close()

    async def main() -> int:
        expiring = tr.AsyncioTransport(verify=False, max_connections=2, keepalive_expiry=0.05,
                                       timeout=5)  # fmt: skip
        async with _served(handler, transport=expiring) as (t, url):
            assert t.preconnect(url, 1)
            await asyncio.sleep(0.3)  # a long collection: the server may have dropped it
            status = (await _post(t, url))[0]
            for _ in range(100):
                if ended[0]:
                    break
                await asyncio.sleep(0.01)
            return status

    assert asyncio.run(main()) == 200
    assert ended == [True, False]


def test_closing_the_transport_closes_the_connections_opened_ahead(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """Also those still in their TLS handshake (a server that never answers it)."""
    accepted = 0
    closed = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted, closed
        accepted += 1
        await reader.read()  # until the client closes
        closed += 1
        writer.close()

    async def until(done: Callable[[], bool]) -> None:
        for _ in range(300):
            if done():
                return
            await asyncio.sleep(0.01)

    async def main() -> None:
        server = await _serve(handler)  # plain TCP: the client's handshake waits forever
        t = _direct(verify=tls[1])
        async with server:
            assert t.preconnect(_url(server, "https", "localhost"), 3)
            await until(lambda: accepted == 3)
            await t.aclose()
            await until(lambda: closed == 3)

    asyncio.run(main())
    assert (accepted, closed) == (3, 3)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_connections_requests_opened_before_the_warm_up_count_against_it(
    scheme: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """A run's first calls can start before its warm-up opens the model's connections (a
    loaded machine: the warm-up's task runs late); those calls open their own, and the
    warm-up then opens only the rest: none that no request will use. Before, it opened all of
    them again (a run of 8 connections opened 16, as many TLS handshakes wasted)."""
    server_ctx, trusting = _tls_for(scheme, tls)
    accepted = 0
    go = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        try:
            while True:
                try:
                    await _read_request(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                await go.wait()
                writer.write(_reply(b"{}"))
                await writer.drain()
        finally:
            writer.close()

    async def main() -> list[int]:
        async with _served(handler, server_ctx, scheme, "localhost", verify=trusting) as (t, url):
            calls = [asyncio.create_task(_post(t, url)) for _ in range(3)]
            for _ in range(300):
                if accepted == 3:
                    break
                await asyncio.sleep(0.01)
            assert t.preconnect(url, 5)  # the warm-up, late
            for _ in range(300):
                if accepted == 5:
                    break
                await asyncio.sleep(0.01)
            go.set()
            statuses = [status for status, _, _ in await asyncio.gather(*calls)]
            statuses += [status for status, _, _ in await asyncio.gather(
                *(_post(t, url) for _ in range(5)))]
            await asyncio.sleep(0.05)  # (a connection opened too many would be accepted now)
        return statuses

    assert asyncio.run(main()) == [200] * 8
    assert accepted == 5


def test_a_url_that_is_not_plain_opens_nothing_ahead() -> None:
    t = _direct()
    assert not t.preconnect("http://xn--nxasmq6b.example:80/v1/../x", 2)
    assert not t.preconnect("http://127.0.0.1:9/v1", 0)


def test_a_call_after_the_client_warmed_does_not_wait_for_the_tls_handshake(
    tls_ca_file: tuple[ssl.SSLContext, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A distant provider's handshake takes two or three round trips: a run opens its first
    connections while it collects, and its first calls go out without them."""
    server_ctx, pem = tls_ca_file
    handshake_s, reply_s = 0.5, 0.05
    listener, server = _keep_alive_server(server_ctx, 1, reply_s, handshake_s)
    model, request = _model_at(monkeypatch, listener.getsockname()[1], pem=pem)

    async def warm(n: int) -> None:
        await model.warm(connections=1)
        await asyncio.sleep(handshake_s + 0.2)  # pytest collecting meanwhile

    [(result, wall)] = _timed_calls(model, request, listener, server, calls=1, before=warm)
    assert result.ok, result.error
    assert wall < handshake_s, wall  # the handshake was over before the call


def test_a_request_waiting_for_a_connection_opened_ahead_times_out_once() -> None:
    """A provider that does not answer (here: a TLS handshake never answered): the request that
    waited for the connection being opened ahead fails when its own connect timeout is up, not
    after a second timeout of its own connecting."""
    import httpx

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async def main() -> float:
        async with _served(silent, None, "https", "localhost", timeout=0.5) as (t, url):
            assert t.preconnect(url, 1)
            started = time.perf_counter()
            with pytest.raises(httpx.ConnectTimeout):
                await _post(t, url)
            return time.perf_counter() - started

    took = asyncio.run(main())
    assert 0.4 <= took < 0.9, took  # one timeout (0.5 s), not two
