"""A Catga client in Python, written from docs/protocol.md alone.

Needs `pip install nats-py`. Usage: python3 client.py NATS_URL

It sends the request `demo.Add` with a JSON payload (so no MessagePack
library is needed), retries it with the same message id (the answer is the
same), sends one the handler refuses, and publishes the event
`demo.Added`. It prints one line per step.
"""

import asyncio
import json
import sys
import time
import uuid

import nats
from nats.errors import NoRespondersError


async def request(nc, name, body, message_id):
    """Sends request `name` as docs/protocol.md says; returns (ok, value)."""
    headers = {
        "Content-Type": "application/json",
        "Catga-Message-Id": message_id,
        # Optional: when we stop waiting, as Unix time in milliseconds.
        "Catga-Deadline": str(int(time.time() * 1000) + 5000),
    }
    reply = await nc.request(
        f"catga.req.{name}", json.dumps(body).encode(), timeout=5, headers=headers
    )
    h = reply.headers or {}
    if h.get("Catga-Status", "ok") == "ok":
        # The reply has the request's content type: JSON here.
        return True, json.loads(reply.data)
    # An error: kind, code and message.
    return False, (h.get("Catga-Error-Kind"), h.get("Catga-Error-Code"), reply.data.decode())


async def main(url):
    nc = await nats.connect(url)
    first_id = str(uuid.uuid4())
    ok, value = await request(nc, "demo.Add", {"a": 2, "b": 3}, first_id)
    print(f"add {ok} {value}")
    ok, value = await request(nc, "demo.Add", {"a": 2, "b": 3}, first_id)
    print(f"retry {ok} {value}")
    ok, value = await request(nc, "demo.Add", {"a": -1, "b": 3}, str(uuid.uuid4()))
    print(f"refused {ok} {value[0]} {value[1]}")
    ok, value = await request(nc, "demo.Add", {"a": 2}, str(uuid.uuid4()))
    print(f"malformed {ok} {value[0]}")
    try:
        await request(nc, "demo.Nobody", {}, str(uuid.uuid4()))
    except NoRespondersError:
        print("no_responders")
    # An event: a plain publish to the event subject.
    await nc.publish(
        "catga.evt.demo.Added",
        json.dumps({"sum": 5}).encode(),
        headers={"Content-Type": "application/json", "Catga-Message-Id": str(uuid.uuid4())},
    )
    await nc.flush()
    print("published")
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
