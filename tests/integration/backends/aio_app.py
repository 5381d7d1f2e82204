#!/usr/bin/python3
"""An aiohttp backend for the gatehouse integration tests.

Binds 127.0.0.1 (port 0 unless --port is given) and writes the port number
to --port-file once it accepts. Every response carries X-Server: NAME.

  /health                 200 "ok"
  /sse?n=&delay=          text/event-stream, n events `delay` seconds apart,
                          each `data: {"i": I, "sent": UNIX_TIME}`
  /ws                     WebSocket echo (text and binary)
  /slow-head?delay=       sleeps before sending the head
  /truncate?size=&send=&mode=close|abort
                          declares Content-Length size, sends `send` bytes,
                          then closes (FIN) or aborts (RST) the connection
  /chunked-truncate?chunks=&size=&mode=
                          chunked; sends `chunks` chunks, never the last one
  /big?size=&cl=0|1       size bytes of the pattern (tests/integration/pattern.py),
                          chunked unless cl=1
  /upload?pause_at=&pause=
                          reads the body as a stream; answers bytes and sha256;
                          stops reading for `pause` s once `pause_at` bytes are in
  /status/N               answers status N
  /close                  answers with Connection: close
  /connid                 the peer address of the connection it came in on, and
                          how many requests that connection has carried
  /hop                    a response carrying hop-by-hop headers
  anything else           echo: method, target, path, query, headers, body
                          length and sha256 of the body received
"""
import argparse
import asyncio
import hashlib
import json
import os
import signal
import socket
import sys
import time

from aiohttp import web, WSMsgType

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pattern import PIECE, pattern  # noqa: E402

NAME = "A"
CONN_REQUESTS = {}


def _peer(request):
    t = request.transport
    p = t.get_extra_info("peername") if t is not None else None
    return f"{p[0]}:{p[1]}" if p else None


def _hdr():
    return {"X-Server": NAME}


async def _read_body(request, pause_at=None, pause=0.0):
    h = hashlib.sha256()
    n = 0
    paused = False
    async for chunk in request.content.iter_any():
        h.update(chunk)
        n += len(chunk)
        if pause_at is not None and not paused and n >= pause_at:
            paused = True
            await asyncio.sleep(pause)
    return n, h.hexdigest()


async def echo(request):
    n, sha = await _read_body(request)
    target = request.raw_path
    path, _, query = target.partition("?")
    doc = {
        "server": NAME,
        "method": request.method,
        "target": target,
        "path": path,
        "query": query,
        "version": f"{request.version.major}.{request.version.minor}",
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
        "body_len": n,
        "body_sha256": sha,
        "peer": _peer(request),
    }
    return web.json_response(doc, headers=_hdr())


async def health(request):
    return web.Response(text="ok", headers=_hdr())


async def sse(request):
    n = int(request.query.get("n", "5"))
    delay = float(request.query.get("delay", "0.5"))
    resp = web.StreamResponse(headers={**_hdr(), "Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    for i in range(n):
        if i:
            await asyncio.sleep(delay)
        payload = json.dumps({"i": i, "sent": time.time()})
        await resp.write(f"id: {i}\ndata: {payload}\n\n".encode())
    await resp.write_eof()
    return resp


async def ws_echo(request):
    ws = web.WebSocketResponse(max_msg_size=64 * 1024 * 1024)
    ws.headers.update(_hdr())
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.type == WSMsgType.ERROR:
            break
    return ws


async def slow_head(request):
    delay = float(request.query.get("delay", "3"))
    await _read_body(request)
    await asyncio.sleep(delay)
    return web.json_response({"slept": delay, "server": NAME}, headers=_hdr())


def _drop(request, mode):
    t = request.transport
    if t is None:
        return
    if mode == "abort":
        sock = t.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
        t.abort()
    else:
        t.close()


async def truncate(request):
    size = int(request.query.get("size", "1000000"))
    send = int(request.query.get("send", "100000"))
    mode = request.query.get("mode", "close")
    resp = web.StreamResponse(headers=_hdr())
    resp.content_length = size
    await resp.prepare(request)
    off = 0
    while off < send:
        n = min(PIECE, send - off)
        await resp.write(pattern(off, n))
        off += n
    _drop(request, mode)
    raise asyncio.CancelledError()


async def chunked_truncate(request):
    chunks = int(request.query.get("chunks", "5"))
    size = int(request.query.get("size", "1000"))
    mode = request.query.get("mode", "close")
    resp = web.StreamResponse(headers=_hdr())
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for i in range(chunks):
        await resp.write(pattern(i * size, size))
    _drop(request, mode)
    raise asyncio.CancelledError()


async def big(request):
    size = int(request.query.get("size", "1048576"))
    resp = web.StreamResponse(headers={**_hdr(), "Content-Type": "application/octet-stream"})
    if request.query.get("cl") == "1" or request.method == "HEAD":
        resp.content_length = size
    else:
        resp.enable_chunked_encoding()
    await resp.prepare(request)
    # pause_at / pause: the body stops for pause seconds at that offset
    pause_at = int(request.query.get("pause_at", "-1"))
    pause = float(request.query.get("pause", "0"))
    off = 0 if request.method != "HEAD" else size    # a HEAD response has no body
    while off < size:
        n = min(PIECE, size - off)
        if off < pause_at < off + n:
            n = pause_at - off
        await resp.write(pattern(off, n))
        off += n
        if off == pause_at:
            await asyncio.sleep(pause)
    await resp.write_eof()
    return resp


async def upload(request):
    pause_at = request.query.get("pause_at")
    pause = float(request.query.get("pause", "0"))
    n, sha = await _read_body(request, int(pause_at) if pause_at else None, pause)
    return web.json_response({"bytes": n, "sha256": sha, "server": NAME}, headers=_hdr())


async def status(request):
    code = int(request.match_info["code"])
    await _read_body(request)
    if code in (204, 304) or code < 200:
        return web.Response(status=code, headers=_hdr())
    return web.Response(status=code, text=f"status {code}\n", headers=_hdr())


async def early(request):
    """Answers `code` after reading only `read` bytes of the body (an upload
    refused part way), then closes."""
    code = int(request.query.get("code", "413"))
    n = int(request.query.get("read", "0"))
    if n:
        await request.content.readexactly(n)
    resp = web.json_response({"early": code, "read": n, "server": NAME}, status=code, headers=_hdr())
    resp.force_close()
    return resp


async def close(request):
    await _read_body(request)
    resp = web.Response(text="closing\n", headers=_hdr())
    resp.force_close()
    return resp


async def connid(request):
    await _read_body(request)
    peer = _peer(request)
    key = id(request.transport)
    CONN_REQUESTS[key] = CONN_REQUESTS.get(key, 0) + 1
    return web.json_response({"peer": peer, "requests_on_conn": CONN_REQUESTS[key],
                              "server": NAME}, headers=_hdr())


async def hop(request):
    await _read_body(request)
    headers = {
        **_hdr(),
        "Connection": "X-Hop-Resp",
        "X-Hop-Resp": "must-not-reach-client",
        "Keep-Alive": "timeout=99, max=7",
        "Proxy-Connection": "keep-alive",
        "Upgrade": "h2c",
        "X-End-To-End": "kept",
    }
    return web.Response(text="hop\n", headers=headers)


def make_app():
    app = web.Application(client_max_size=1 << 40)
    app.router.add_get("/health", health)
    app.router.add_get("/sse", sse)
    app.router.add_get("/ws", ws_echo)
    app.router.add_route("*", "/slow-head", slow_head)
    app.router.add_get("/truncate", truncate)
    app.router.add_get("/chunked-truncate", chunked_truncate)
    app.router.add_route("*", "/big", big)
    app.router.add_route("*", "/upload", upload)
    app.router.add_route("*", r"/status/{code:\d{3}}", status)
    app.router.add_route("*", "/close", close)
    app.router.add_route("*", "/early", early)
    app.router.add_route("*", "/connid", connid)
    app.router.add_route("*", "/hop", hop)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def main(args):
    global NAME
    NAME = args.name
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    runner = web.AppRunner(make_app(), access_log=None, handle_signals=False,
                           keepalive_timeout=300)
    await runner.setup()
    site = web.SockSite(runner, sock, backlog=512)
    await site.start()
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(sock.getsockname()[1]))
        os.replace(tmp, args.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="A")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    asyncio.run(main(ap.parse_args()))
