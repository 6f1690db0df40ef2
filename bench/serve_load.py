"""Load a running `task=serve` server with concurrent streaming clients; report throughput and
latency percentiles.

    python -m internlm task=serve checkpoint=<run> task.port=8000 &
    python bench/serve_load.py --base-url http://127.0.0.1:8000 --concurrency 32 --requests 256 --max-tokens 128

Each client sends streaming chat completions (`stream_options.include_usage`, so completion
tokens are the server's own count) back to back until `--requests` have been sent in all.
Reported: output tokens/s over the whole run, requests/s, and p50/p99 of time to first token,
end-to-end latency and per-request decode speed. `--json` prints one JSON line instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def one_request(client: httpx.AsyncClient, body: dict) -> dict:
    start = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {"latency": end - start, "ttft": (first or end) - start, "tokens": tokens}


async def run(args) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers, timeout=args.timeout, limits=limits) as client:
        model = args.model or (await client.get("/v1/models")).json()["data"][0]["id"]
        body = {"model": model, "messages": [{"role": "user", "content": args.prompt}], "max_tokens": args.max_tokens,
                "temperature": args.temperature, "stream": True, "stream_options": {"include_usage": True}}
        remaining = iter(range(args.requests))
        results: list[dict] = []
        errors: list[str] = []

        async def worker() -> None:
            for _ in remaining:  # shared iterator: each request is taken once
                try:
                    results.append(await one_request(client, body))
                except Exception as error:  # counted and reported, the run goes on
                    errors.append(str(error))

        await one_request(client, {**body, "max_tokens": 4})  # warm-up (first-call costs)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    decode = [r["tokens"] / max(r["latency"] - r["ttft"], 1e-9) for r in results if r["tokens"] > 1]
    report = {
        "model": model, "concurrency": args.concurrency, "requests": len(results), "errors": len(errors),
        "max_tokens": args.max_tokens, "wall_s": round(wall, 3), "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / wall, 1), "requests_per_s": round(len(results) / wall, 2),
    }
    for name in ("ttft", "latency"):
        values = [r[name] for r in results]
        if values:
            report[f"{name}_p50_s"] = round(percentile(values, 50), 4)
            report[f"{name}_p99_s"] = round(percentile(values, 99), 4)
    if decode:
        report["per_request_tokens_per_s_p50"] = round(statistics.median(decode), 1)
    if errors:
        report["first_error"] = errors[0]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model", default=None, help="default: the first id in /v1/models")
    parser.add_argument("--concurrency", type=int, default=32, help="clients streaming at once")
    parser.add_argument("--requests", type=int, default=128, help="requests in all")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (every request runs max_tokens unless it stops)")
    parser.add_argument("--prompt", default="Tell me a long story about the sea.")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key:>30}: {value}")


if __name__ == "__main__":
    main()
