"""The progress line ``job.wait()`` draws on stderr when it is a terminal."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

WIDTH = 24


class ProgressLine:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._drawn = False

    @staticmethod
    def enabled(stream: TextIO | None = None) -> bool:
        stream = stream or sys.stderr
        try:
            return stream.isatty()
        except (AttributeError, ValueError):
            return False

    def update(self, job: dict[str, Any]) -> None:
        progress = min(max(float(job.get("progress") or 0.0), 0.0), 1.0)
        filled = int(progress * WIDTH)
        bar = "█" * filled + "·" * (WIDTH - filled)
        stage = f"  {job['stage']}" if job.get("stage") else ""
        elapsed = time.monotonic() - self.started
        line = f"{job.get('id', '')[:8]} {bar} {progress * 100:3.0f}%  {job.get('status', '')}{stage}  {elapsed:.0f}s"
        self.stream.write("\r\x1b[2K" + line[:200])
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
