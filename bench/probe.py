"""Measure the latency floor of a server: N GETs of one path, C at a time, nothing else.

W2 compares wall times with ``requests × latency ÷ concurrency``. A server that sleeps
20 ms still responds later than that (timer granularity, its own request handling), so
this probe measures how close the simplest possible client gets, and with which response
times. Prints ``{"wall_s", "requests", "p50_ms", "p99_ms"}`` as JSON.

    python bench/probe.py --url http://127.0.0.1:PORT/api/v2/system/heartbeat/ --requests 3000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp
import orjson


async def probe(url: str, requests: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    remaining = iter(range(requests))

    async def worker(session: aiohttp.ClientSession) -> None:
        for _ in remaining:
            sent = time.perf_counter()
            async with session.get(url) as reply:
                await reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"GET {url} returned {reply.status}")
            latencies.append(time.perf_counter() - sent)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "wall_s": wall,
        "requests": len(latencies),
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the URL to GET, on 127.0.0.1")
    parser.add_argument("--requests", type=int, required=True, help="GET requests to send")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    options = parser.parse_args()
    result = asyncio.run(probe(options.url, options.requests, options.concurrency))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
