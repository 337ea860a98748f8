"""Frames of a camera source (camera_driver.sources) read in a thread of their own, with the
reconnect rule (ROS-free): when frames stop for ``frame_timeout_s``, or the source fails, the error is
reported and the source reopened every ``reconnect_period_s``; a missing device or file is
reported by name and retried, never fatal. Waits are on an event, so stop() ends it at once."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from camera_driver.sources import Frame, FrameSource, SourceError

# How long one read may block, at most: the loop notices a stop and the frame timeout this often.
MAX_READ_S = 0.5
# Frames counted for the reported rate arrived within this many seconds.
RATE_WINDOW_S = 2.0


@dataclass(frozen=True)
class CaptureStatus:
    error: str              # the current error, empty while frames flow
    streaming: bool         # the source is open
    published: int          # frames delivered so far
    rate_hz: float          # over the last RATE_WINDOW_S
    reconnects: int         # attempts to (re)open the source after the first one failed or frames stopped


class FrameStream:
    def __init__(self, source: FrameSource, deliver: Callable[[Frame], None], frame_timeout_s: float,
                 reconnect_period_s: float, *, on_error: Callable[[str], None], on_open: Callable[[str], None],
                 keep_running: Callable[[], bool] = lambda: True):
        """``deliver(frame)``: each frame, on the capture thread; ``on_error(text)``: a new error;
        ``on_open(description)``: the source streams; ``keep_running()``: False once the consumer
        is going away (an error from ``deliver`` is then not one to report)."""
        self.source, self.deliver = source, deliver
        self.frame_timeout_s, self.reconnect_period_s = frame_timeout_s, reconnect_period_s
        self.on_error, self.on_open, self.keep_running = on_error, on_open, keep_running
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error, self._open, self._published, self._reconnects = "", False, 0, 0
        self._arrivals: list[float] = []
        self._thread = threading.Thread(target=self._run, name="camera_capture", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Stop reading soon (any thread, without waiting)."""
        self._stop.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop reading, wait for the capture thread, close the source."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
        self.source.close()

    def status(self) -> CaptureStatus:
        with self._lock:
            window = list(self._arrivals)
            error, published, reconnects, streaming = self._error, self._published, self._reconnects, self._open
        span = window[-1] - window[0] if len(window) > 1 else 0.0
        return CaptureStatus(error, streaming, published, (len(window) - 1) / span if span > 0 else 0.0, reconnects)

    def _set_error(self, text: str) -> None:
        with self._lock:
            changed, self._error = text != self._error, text
        if changed and text:
            self.on_error(text)

    def _run(self) -> None:
        try:
            self._capture()
        except Exception:
            if not self._stop.is_set() and self.keep_running():
                raise
            # delivering raced with the consumer's shutdown: nothing to report

    def _reopen_later(self, why: str | None) -> float:
        """Report ``why`` (None: already reported), count a reconnect; when to try again."""
        if why:
            self._set_error(why)
        with self._lock:
            self._open = False
            self._reconnects += 1
        return time.monotonic() + self.reconnect_period_s

    def _capture(self) -> None:
        next_attempt, last_frame = 0.0, time.monotonic()
        while not self._stop.is_set():
            if not self._open:
                if self._stop.wait(max(next_attempt - time.monotonic(), 0.0)):
                    return
                try:
                    self.source.open()
                except (SourceError, ValueError, RuntimeError) as exc:
                    next_attempt = self._reopen_later(f"{exc}; retrying every {self.reconnect_period_s:g} s")
                    continue
                with self._lock:
                    self._open = True
                last_frame = time.monotonic()
                self.on_open(self.source.describe())
            try:
                frame = self.source.read(timeout_s=min(MAX_READ_S, self.frame_timeout_s))
            except (SourceError, RuntimeError) as exc:
                frame, failed = None, True
                self._set_error(f"{self.source.describe()} failed: {exc}")
            else:
                failed = False
            if frame is None:
                silent = time.monotonic() - last_frame
                if failed or silent > self.frame_timeout_s:
                    self.source.close()
                    next_attempt = self._reopen_later(
                        None if failed else f"no frames from {self.source.describe()} for {silent:.1f} s; reconnecting")
                continue
            last_frame = time.monotonic()
            self.deliver(frame)
            with self._lock:
                self._error = ""
                self._published += 1
                self._arrivals = [t for t in self._arrivals if last_frame - t < RATE_WINDOW_S] + [last_frame]
