"""A strict, minimal reader of our SSE wire format, to check exactly what goes over the wire."""

from __future__ import annotations

import json


async def read_sse(resp, limit: int | None = None):
    """Return [(id or None, data string)] until [DONE] or `limit` messages."""
    messages = []
    event_id, data = None, []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            continue
        if line == "":
            if data:
                messages.append((event_id, "\n".join(data)))
                if data == ["[DONE]"] or (limit and len(messages) >= limit):
                    return messages
            event_id, data = None, []
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id":
            event_id = value
        elif field == "data":
            data.append(value)
    return messages


def payloads(messages):
    return [json.loads(d) for _, d in messages if d != "[DONE]"]
