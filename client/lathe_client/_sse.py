"""A server-sent events decoder (the WHATWG event-stream format), fed bytes as they arrive."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(r"\r\n|\r|\n")


@dataclass
class Event:
    event: str
    data: str
    id: str | None


class SSEDecoder:
    def __init__(self) -> None:
        self._pending = ""
        self._event = ""
        self._data: list[str] = []
        self.last_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by this chunk (comments and keep-alives yield none)."""
        text = self._pending + chunk.decode("utf-8", "replace")
        lines = _LINE.split(text)
        # A trailing "\r" may be half of "\r\n": keep it with the unfinished last line.
        self._pending = lines.pop()
        if text.endswith("\r"):
            self._pending = lines.pop() + "\r" if lines else "\r"
        events = []
        for line in lines:
            if (event := self._line(line)) is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> Event | None:
        if line == "":
            if not self._data and not self._event:
                return None
            event = Event(self._event or "message", "\n".join(self._data), self.last_id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None
