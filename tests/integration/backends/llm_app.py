#!/usr/bin/python3
"""An OpenAI-style chat completions backend on FastAPI + uvicorn.

POST /v1/chat/completions
  "stream": true   -> text/event-stream of `data: {chunk}\\n\\n`, one token per
                      chunk, x_delay seconds apart, then `data: [DONE]\\n\\n`
  otherwise        -> one chat.completion JSON object
Test-only request fields: x_tokens (list of strings), x_delay (seconds).
Each stream chunk also carries gh_sent, the UNIX time it was written.

Binds 127.0.0.1 port 0 (or --port) and writes the port to --port-file.
"""
import argparse
import asyncio
import json
import os
import socket
import time
import uuid

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

app = FastAPI()
DEFAULT_TOKENS = ["Hello", ",", " this", " is", " a", " streamed", " answer", "."]


@app.get("/health")
async def health():
    return PlainTextResponse("ok")


@app.post("/v1/chat/completions")
async def chat(request: Request):
    body = await request.json()
    tokens = [str(t) for t in body.get("x_tokens") or DEFAULT_TOKENS]
    delay = float(body.get("x_delay", 0.05))
    model = body.get("model", "test-model")
    cid = "chatcmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())

    if not body.get("stream"):
        text = "".join(tokens)
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": len(tokens),
                      "total_tokens": len(tokens) + 1},
        })

    async def events():
        for i, tok in enumerate(tokens):
            if i:
                await asyncio.sleep(delay)
            delta = {"content": tok}
            if i == 0:
                delta["role"] = "assistant"
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created,
                     "model": model, "gh_sent": time.time(),
                     "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n"
        last = {"id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model, "gh_sent": time.time(),
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    args = ap.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(sock.getsockname()[1]))
        os.replace(tmp, args.port_file)
    config = uvicorn.Config(app, http="h11", lifespan="off", log_level="warning",
                            access_log=False, timeout_keep_alive=300)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
