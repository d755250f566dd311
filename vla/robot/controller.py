"""The robot-side controller loop: asynchronous inference, stitching, safety, watchdog.

    client = PolicyClient("ws://127.0.0.1:8000")
    controller = Controller(client, ControllerConfig(control_hz=20))
    controller.start(observation)              # blocks until the first chunk arrives
    rate = Rate(20)
    while running:
        robot.apply(controller.act(observation))   # never blocks on the network
        rate.sleep()
        observation = robot.observe()
    robot.apply(controller.shutdown())         # the safe action; worker stopped, socket closed
    controller.reset()                         # before the next episode on the same controller

Why it is built this way (numpy + `vla.robot.client` only, so it runs on a robot computer):

- `act` runs in the control thread and never waits for the network. A worker thread owns the
  client and fetches the next chunk while the current one executes: a request goes out every
  `replan_every` steps (or as soon as the previous reply is in, if inference is slower). Its
  default is the chunker's receding horizon, `default_n_action_steps`, so the robot replans as
  often as evaluation in simulation does.
- Chunks are stitched into one plan by `ChunkStitcher` (stale prefix dropped, then
  replace/freeze/blend at the seam), then every command passes `SafetyLayer` (limits, per-step
  change, NaN guard).
- The watchdog is a check inside `act`: if no fresh chunk (one with at least one action still
  ahead) arrived within `deadline_s`, or the plan has run out, the command is the safe action
  (zero delta, gripper held). Because `act` never blocks, the first tick after the deadline
  commands the stop: within one control period, whatever the server or network does.
- Freshness is judged by when the observation was taken, not when its chunk arrived. Every
  observation is stamped (`act(observation, stamp=...)`, default: the tick's clock time), and a
  chunk whose observation is older than `max_chunk_age_s` when it would be used is dropped: the
  arm must not move on a picture of the world from seconds ago. After a watchdog stop, motion
  resumes only with a chunk computed from an observation taken after the stop began; the plan
  from before the stop is discarded, never resumed.
- `shutdown` returns within its timeout whatever the client or server does (closing a client
  blocked mid-send happens on a helper thread), and every `act` after it returns the safe
  action. `reset` starts a new episode: a reply still in flight from the last one is ignored.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from vla.robot.chunker import default_n_action_steps
from vla.robot.safety import SafetyConfig, SafetyLayer
from vla.robot.stitching import ChunkStitcher, StitchConfig

log = logging.getLogger(__name__)

# Why a tick's command is what it is.
PLAN = "plan"  # the stitched plan's action, through the safety layer
WAITING = "waiting"  # no chunk has arrived yet: safe action
DEADLINE = "deadline"  # the watchdog: no fresh chunk within deadline_s: safe action
NO_PLAN = "no_plan"  # the plan ran out before a new chunk arrived: safe action
UNUSABLE = "unusable"  # the planned action was non-finite: safe action
STOPPED = "stopped"  # after shutdown(): safe action
SAFE_SOURCES = (WAITING, DEADLINE, NO_PLAN, UNUSABLE, STOPPED)

# Why a reply was not stitched into the plan (`ControllerStats.stale_reasons`).
PAST = "past"  # every action of the chunk was for a step already gone
TOO_OLD = "too_old"  # its observation was older than max_chunk_age_s
BEFORE_STOP = "before_stop"  # its observation was taken before the watchdog stop


class InferenceClient(Protocol):
    """What the controller needs from a client (`vla.robot.client.PolicyClient` is one)."""

    metadata: dict[str, Any]

    def infer(self, observation: Mapping[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ControllerConfig:
    control_hz: float = 20.0
    replan_every: int | None = None  # steps between requests; None: default_n_action_steps(H)
    deadline_s: float = 0.5  # watchdog: longest time without a fresh chunk before a safe stop
    # A chunk whose observation is older than this when it would be used is dropped; None: the
    # watchdog's deadline_s.
    max_chunk_age_s: float | None = None
    stitch: StitchConfig = field(default_factory=StitchConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    retry_delay_s: float = 0.05  # after a failed request, before the next one
    log_ticks: int = 100_000  # how many ticks `Controller.ticks` keeps

    def __post_init__(self) -> None:
        if self.control_hz <= 0:
            raise ValueError(f"control_hz must be > 0, got {self.control_hz}")
        if self.deadline_s < 1 / self.control_hz:
            raise ValueError(
                f"deadline_s ({self.deadline_s}) must be at least one control period "
                f"({1 / self.control_hz:.4f} s at {self.control_hz} Hz)"
            )
        if self.replan_every is not None and self.replan_every < 1:
            raise ValueError(f"replan_every must be >= 1, got {self.replan_every}")
        if self.max_chunk_age_s is not None and not self.max_chunk_age_s > 0:
            raise ValueError(f"max_chunk_age_s must be > 0, got {self.max_chunk_age_s}")

    @property
    def chunk_age_limit(self) -> float:
        return self.deadline_s if self.max_chunk_age_s is None else self.max_chunk_age_s


@dataclass(frozen=True)
class Tick:
    step: int
    time: float  # monotonic seconds when the command was decided
    source: str  # PLAN or one of SAFE_SOURCES
    action: np.ndarray  # float64 (A,): the command


@dataclass
class ControllerStats:
    ticks: int = 0
    sources: collections.Counter[str] = field(default_factory=collections.Counter)
    requests: int = 0
    chunks: int = 0  # replies stitched into the plan
    stale_chunks: int = 0  # replies dropped as too old (reasons in stale_reasons)
    stale_reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    watchdog_stops: int = 0  # times the watchdog stopped the arm
    request_errors: int = 0
    last_error: str | None = None
    round_trip_ms: list[float] = field(default_factory=list)
    latency_steps: list[int] = field(default_factory=list)  # steps between request and use
    arrivals: list[float] = field(default_factory=list)  # clock time of each fresh chunk


@dataclass(frozen=True)
class _Request:
    episode: int  # Controller._episode when it was made
    step: int  # the control step of its observation
    stamp: float  # when its observation was taken (controller clock)
    observation: dict[str, Any]


class Controller:
    def __init__(
        self,
        client: InferenceClient,
        config: ControllerConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.config = config or ControllerConfig()
        self.clock = clock
        self.action_horizon = int(client.metadata["action_horizon"])
        self.action_dim = int(client.metadata.get("action_dim", 7))
        self.safety = SafetyLayer(self.config.safety)
        if self.safety.action_dim != self.action_dim:
            raise ValueError(
                f"the safety limits have {self.safety.action_dim} dimensions, the server's "
                f"actions {self.action_dim}"
            )
        self.replan_every = self.config.replan_every or default_n_action_steps(self.action_horizon)
        self.stats = ControllerStats()
        self.ticks: collections.deque[Tick] = collections.deque(maxlen=self.config.log_ticks)
        # Shared with the worker, under _lock: the request to send, replies that came back.
        self._lock = threading.Condition()
        self._episode = 0  # replies of an earlier episode (before reset()) are ignored
        self._request: _Request | None = None
        self._in_flight = False
        self._arrived: list[tuple[_Request, np.ndarray, float]] = []  # (request, chunk, arrival)
        self._stopping = False
        self._shut_down = False
        self._start_episode()  # the per-episode state: step, watchdog, stitcher
        self._worker = threading.Thread(target=self._work, name="vla-inference-client", daemon=True)
        self._worker.start()

    def _start_episode(self) -> None:
        """Control-thread state of one episode."""
        self.step = 0
        self.last_fresh: float | None = None  # when the last fresh chunk arrived (clock time)
        self.stopped_at: float | None = None  # when the watchdog stopped the arm (until fresh)
        self._last_request_step: int | None = None
        self._retry = False  # the last request failed: send the next one without waiting
        self.stitcher = ChunkStitcher(self.config.stitch)
        self.safety.reset()

    def reset(self) -> None:
        """Start a new episode: no plan, step 0, and any reply still in flight is ignored."""
        with self._lock:
            self._episode += 1
            if self._request is not None:  # not picked up by the worker yet: never sent
                self._request, self._in_flight = None, False
            self._arrived = []
        self._start_episode()
        reset = getattr(self.client, "reset", None)
        if callable(reset):
            reset()

    # ------------------------------------------------------------------ control thread
    def start(
        self, observation: Mapping[str, Any], timeout: float = 60.0, stamp: float | None = None
    ) -> None:
        """Request the first chunk and wait for it, so the robot starts moving on a plan.

        `stamp` is when the observation was taken (the controller's clock; default: now)."""
        stamp = self.clock() if stamp is None else stamp
        self._submit(observation, stamp)
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._arrived:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    raise TimeoutError(
                        f"no chunk from the server within {timeout} s "
                        f"(last error: {self.stats.last_error})"
                    )
                if not self._in_flight:
                    self._submit(observation, stamp)  # the first request failed: retry
                self._lock.wait(min(remaining, 0.1))

    def act(self, observation: Mapping[str, Any], stamp: float | None = None) -> np.ndarray:
        """The command float64 (A,) for this control step; call once per tick. Never blocks.

        `stamp` is when the observation was taken, on the controller's clock (default: now);
        pass the camera's capture time when the robot knows it."""
        now = self.clock()
        if self._shut_down:
            return self._record(now, STOPPED, self.safety.safe())
        stamp = now if stamp is None else stamp
        with self._lock:
            arrived, self._arrived = self._arrived, []
            retry, self._retry = self._retry, False
        for request, chunk, arrival in arrived:
            self.stats.latency_steps.append(self.step - request.step)
            stale = self._staleness(request, len(chunk), now)
            if stale is not None:  # not fresh: the watchdog keeps counting
                self.stats.stale_chunks += 1
                self.stats.stale_reasons[stale] += 1
                retry = retry or stale != PAST  # ask again at once, with this tick's observation
                continue
            if self.stopped_at is not None:  # the first chunk after a watchdog stop
                self.stitcher = ChunkStitcher(self.config.stitch)  # the old plan never resumes
                self.stopped_at = None
            self.stitcher.add(chunk, request.step, self.step)
            self.stats.chunks += 1
            self.stats.arrivals.append(arrival)
            self.last_fresh = arrival
        due = self._last_request_step is None or (
            self.step - self._last_request_step >= self.replan_every
        )
        if due or retry:
            self._submit(observation, stamp)

        planned = self.stitcher.action(self.step)
        if self.last_fresh is None:
            source, action = WAITING, self.safety.safe()
        elif self.stopped_at is not None or now - self.last_fresh > self.config.deadline_s:
            if self.stopped_at is None:
                self.stopped_at = now
                self.stats.watchdog_stops += 1
            source, action = DEADLINE, self.safety.safe()
        elif planned is None:
            source, action = NO_PLAN, self.safety.safe()
        else:
            action, usable = self.safety.limit(planned)
            source = PLAN if usable else UNUSABLE
        return self._record(now, source, action)

    def _record(self, now: float, source: str, action: np.ndarray) -> np.ndarray:
        self.ticks.append(Tick(self.step, now, source, action))
        self.stats.ticks += 1
        self.stats.sources[source] += 1
        self.step += 1
        return action

    def _staleness(self, request: _Request, length: int, now: float) -> str | None:
        """Why a chunk of `length` actions for `request` must not join the plan, or None."""
        if self.stopped_at is not None and request.stamp < self.stopped_at:
            return BEFORE_STOP
        if now - request.stamp > self.config.chunk_age_limit:
            return TOO_OLD
        if self.step - request.step >= length:
            return PAST
        return None

    def _submit(self, observation: Mapping[str, Any], stamp: float) -> None:
        """Hand the observation to the worker unless a request is already out (never blocks)."""
        with self._lock:
            if self._in_flight or self._stopping:
                return
            # Copies: a robot driver may refill its image buffers while the request is out.
            snapshot = {
                key: value.copy() if isinstance(value, np.ndarray) else value
                for key, value in observation.items()
            }
            self._request = _Request(self._episode, self.step, stamp, snapshot)
            self._in_flight = True
            self._lock.notify_all()
        self._last_request_step = self.step
        self.stats.requests += 1

    def shutdown(self, timeout: float = 5.0) -> np.ndarray:
        """Stop the worker and close the connection, within `timeout` s whatever the server
        does; returns the safe action, which the robot must command last (every later `act`
        returns it too)."""
        deadline = time.monotonic() + timeout
        self._shut_down = True
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        # Closing unblocks a worker waiting for a reply; a client blocked mid-send may block its
        # closer too, so the close runs on a helper thread that we wait for only until the deadline.
        closer = threading.Thread(target=self.client.close, name="vla-client-close", daemon=True)
        closer.start()
        for thread in (closer, self._worker):
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s did not stop within %s s; leaving it behind", thread.name, timeout)
        return self.safety.safe()

    def chunks_waiting(self) -> int:
        """Replies received and not yet stitched (the next `act` takes them)."""
        with self._lock:
            return len(self._arrived)

    @property
    def worker_alive(self) -> bool:
        return self._worker.is_alive()

    # ------------------------------------------------------------------ worker thread
    def _work(self) -> None:
        while True:
            with self._lock:
                while self._request is None and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                request, self._request = self._request, None
            try:
                reply = self.client.infer(request.observation)
                chunk = np.asarray(reply["actions"], dtype=np.float64)
                if chunk.ndim != 2 or chunk.shape[1] != self.action_dim or len(chunk) == 0:
                    raise ValueError(f"the server sent actions of shape {chunk.shape}")
                if not np.isfinite(chunk).all():
                    raise ValueError("the server sent non-finite actions")
            except Exception as error:  # network, server error, bad chunk: retry with a newer obs
                with self._lock:
                    if self._stopping:
                        return
                    self.stats.request_errors += 1
                    self.stats.last_error = f"{type(error).__name__}: {error}"
                    self._lock.wait(self.config.retry_delay_s)
                    self._in_flight = False
                    self._retry = True
                continue
            arrival = self.clock()
            with self._lock:
                if request.episode == self._episode:  # else: an earlier episode's reply
                    self._arrived.append((request, chunk, arrival))
                self._in_flight = False
                timing = reply.get("client_timing", {})
                if "round_trip_ms" in timing:
                    self.stats.round_trip_ms.append(float(timing["round_trip_ms"]))
                self._lock.notify_all()


class Rate:
    """Sleeps to keep a loop at `hz`; an overrun tick starts the next period at once (no burst)."""

    def __init__(self, hz: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = 1.0 / hz
        self.clock = clock
        self.next = clock() + self.period
        self.overruns = 0

    def sleep(self) -> None:
        now = self.clock()
        if now < self.next:
            time.sleep(self.next - now)
            self.next += self.period
        else:
            self.overruns += 1
            self.next = now + self.period
