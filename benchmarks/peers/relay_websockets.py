"""What a Python user might write instead: protocol v1 pairing and relay on
the ``websockets`` library and uvloop, in as few lines as it takes.

Usage: python relay_websockets.py PORT
"""

import asyncio
import json
import sys

import websockets

try:
    import uvloop
except ImportError:  # a smoke run (benchmarks/run.py --quick) without the bench extra
    uvloop = asyncio

waiting = []
partner = {}


async def handler(ws):
    await ws.send('{"type":"waiting"}')
    if waiting:
        other = waiting.pop()
        partner[ws], partner[other] = other, ws
        await other.send('{"type":"paired"}')
        await ws.send('{"type":"paired"}')
    else:
        waiting.append(ws)
    try:
        async for frame in ws:
            try:
                command = json.loads(frame)
            except ValueError:
                await ws.send('{"type":"error","code":"bad_json","message":"not JSON"}')
                continue
            if command.get("type") == "message" and isinstance(command.get("text"), str):
                other = partner.get(ws)
                if other is not None:
                    event = {"type": "message", "text": command["text"]}
                    await other.send(json.dumps(event, ensure_ascii=False, separators=(",", ":")))
    finally:
        if ws in waiting:
            waiting.remove(ws)
        other = partner.pop(ws, None)
        if other is not None:
            partner.pop(other, None)
            try:
                await other.send('{"type":"partner_left"}')
            except websockets.ConnectionClosed:
                pass


async def main():
    async with websockets.serve(
        handler, "127.0.0.1", int(sys.argv[1]), compression=None, max_size=65536, backlog=4096
    ):
        await asyncio.Future()


uvloop.run(main())
