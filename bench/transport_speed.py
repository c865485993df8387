"""Benchmark: CPU per call of ``httpx.AsyncClient`` against the model clients' own HTTP path.

Usage::

    python bench/transport_speed.py [--calls 2000] [--concurrency 1,4,16] [--tls]

Starts the simulator as its own process (zero latency) and sends the same chat requests two
ways per concurrency level: ``httpx.AsyncClient`` (its default transport, anyio under httpcore)
and ``providers.transport.AsyncioTransport.stream_post`` (httpcore's pool on the plugin's own sockets,
what the model clients use). Prints the CPU time per call of this process for both and their
ratio (same run, same machine).

With ``--tls`` both talk HTTPS to a small local TLS server instead (its own process, a fixed
chat completion, a certificate from ``trustme``, a test dependency), as to a real provider.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import start_sim

from pytest_modelrollout.providers.transport import SUPPORTED, make_transport

BODY = {
    "model": "good?latency_ms=0&jitter=0",
    "messages": [{"role": "user", "content": "Where is my order A-10001? It has not arrived."}],
}


TLS_SERVER = """
import asyncio, json, ssl, sys

BODY = json.dumps({"id": "c", "object": "chat.completion", "model": "m", "choices": [{"index": 0,
    "message": {"role": "assistant", "content": "Your order is on its way."},
    "finish_reason": "stop"}], "usage": {"prompt_tokens": 12, "completion_tokens": 7}}).encode()
HEAD = b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: %d\\r\\n\\r\\n"

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\\r\\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            writer.write(HEAD % len(BODY) + BODY)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        writer.close()

async def main():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(sys.argv[1])
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


def start_tls_server(tmp: Path) -> tuple[subprocess.Popen[bytes], str, ssl.SSLContext]:
    """(the server process, its base URL, a client context trusting it)."""
    try:
        import trustme
    except ImportError:
        raise SystemExit("--tls needs trustme (pip install -e '.[test]')") from None
    ca = trustme.CA()
    chain = tmp / "server.pem"
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(chain))
    proc = subprocess.Popen([sys.executable, "-c", TLS_SERVER, str(chain)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    return proc, f"https://localhost:{port}", trusting


async def cpu_per_call_direct(
    url: str, calls: int, concurrency: int, verify: ssl.SSLContext | bool = False
) -> float:
    transport = make_transport(verify=verify, max_connections=concurrency, trust_env=False, timeout=30)
    assert transport is not None
    payload = json.dumps(BODY).encode()
    headers = {"content-type": "application/json"}
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate, transport.stream_post(url, payload, headers) as (status, _, chunks):
            [chunk async for chunk in chunks]
            assert status == 200

    await asyncio.gather(*(one() for _ in range(min(100, calls))))  # connect, warm up
    t0 = time.process_time()
    await asyncio.gather(*(one() for _ in range(calls)))
    spent = (time.process_time() - t0) / calls * 1000.0
    await transport.aclose()
    return spent


async def cpu_per_call_httpx(
    url: str, calls: int, concurrency: int, verify: ssl.SSLContext | bool = False
) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30, verify=verify) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate, client.stream("POST", url, json=BODY) as resp:
                [chunk async for chunk in resp.aiter_bytes()]
                assert resp.status_code == 200

        await asyncio.gather(*(one() for _ in range(min(100, calls))))  # connect, warm up
        t0 = time.process_time()
        await asyncio.gather(*(one() for _ in range(calls)))
        return (time.process_time() - t0) / calls * 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--tls", action="store_true", help="HTTPS to a local TLS server")
    args = ap.parse_args()
    if not SUPPORTED:
        raise SystemExit("the asyncio transport needs Python 3.11+ (not on Windows)")
    with tempfile.TemporaryDirectory(prefix="mr-transport-") as tmp:
        verify: ssl.SSLContext | bool = False
        if args.tls:
            proc, base, verify = start_tls_server(Path(tmp))
        else:
            proc, base = start_sim()
        try:
            url = base + "/v1/chat/completions"
            for c in (int(x) for x in args.concurrency.split(",")):
                default = asyncio.run(cpu_per_call_httpx(url, args.calls, c, verify))
                direct = asyncio.run(cpu_per_call_direct(url, args.calls, c, verify))
                print(
                    f"concurrency {c:>3}{' (TLS)' if args.tls else ''}: httpx.AsyncClient "
                    f"{default:.3f} ms CPU/call; the model clients' path {direct:.3f} ms "
                    f"({default / direct:.2f}x less)"
                )
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
