"""Prints every frame of a user's stream, from the start of their event log.

    python3 tour/watch.py URL TOKEN

URL is the daemon's http:// address; needs `pip install websockets`.
"""

import asyncio
import sys

import websockets


async def watch(url: str, token: str) -> None:
    stream = url.replace("http://", "ws://", 1) + f"/v1/stream?since=0&token={token}"
    async with websockets.connect(stream) as ws:
        async for frame in ws:
            print(frame, flush=True)


if __name__ == "__main__":
    asyncio.run(watch(sys.argv[1], sys.argv[2]))
