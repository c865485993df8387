"""Benchmark: CPU per call of ``httpx.AsyncClient`` against the model clients' own HTTP path.

Usage::

    python bench/transport_speed.py [--calls 2000] [--concurrency 1,4,16]

Starts the simulator as its own process (zero latency) and sends the same chat requests two
ways per concurrency level: ``httpx.AsyncClient`` (its default transport, anyio under httpcore)
and ``providers.transport.AsyncioTransport.stream_post`` (httpcore's pool on the plugin's own sockets,
what the model clients use). Prints the CPU time per call of this process for both and their
ratio (same run, same machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
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


async def cpu_per_call_direct(url: str, calls: int, concurrency: int) -> float:
    transport = make_transport(verify=False, max_connections=concurrency, trust_env=False, timeout=30)
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


async def cpu_per_call_httpx(url: str, calls: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
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
    args = ap.parse_args()
    if not SUPPORTED:
        raise SystemExit("the asyncio transport needs Python 3.11+")
    proc, sim = start_sim()
    try:
        url = sim + "/v1/chat/completions"
        for c in (int(x) for x in args.concurrency.split(",")):
            default = asyncio.run(cpu_per_call_httpx(url, args.calls, c))
            direct = asyncio.run(cpu_per_call_direct(url, args.calls, c))
            print(
                f"concurrency {c:>3}: httpx.AsyncClient {default:.3f} ms CPU/call; the model "
                f"clients' path {direct:.3f} ms ({default / direct:.2f}x less)"
            )
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
