"""The policy server: a websocket endpoint that batches robots' observations into forward passes.

    server = PolicyServer(VLAPolicy.from_pretrained(path), ServerConfig(port=8000))
    server.run()                     # blocks; SIGINT/SIGTERM stop it cleanly

Wire format and error replies: `vla.robot.protocol` (shared with the robot-side client, which
must not import torch; this module is the torch side). Why the pieces are shaped this way:

- One inference thread runs the model; the asyncio loop only decodes, validates and replies. So
  health checks, error replies and new connections never wait behind a forward pass, and the
  model is never entered by two threads at once.
- Requests wait in one queue. The batcher takes the first, then everything that arrives within
  `max_wait_ms` (up to `max_batch`), and runs them as one `VLAPolicy.infer` call per kind of
  request (plain, think, reasoning reuse: one call takes one kind): requests that arrive while a
  pass is running are batched into the next one even with `max_wait_ms=0`. `max_batch=1` turns
  batching off.
- The reply is the policy's own `infer` dict, sliced to the request's observation, plus the
  server's timing: what a robot gets over the wire is what a user gets from the policy.
- Every request is validated on its own before it can join a batch, so one robot's malformed
  observation never fails another robot's request; if a batched pass still fails, its requests
  are retried one by one so only the culprit gets the error.
- Loopback by default, an optional token (``Authorization: Bearer <token>``, or openpi's
  ``Api-Key <token>``), and a message size limit enforced by the websocket layer before a
  message is buffered. A token that is set but empty is refused (it would read as "no
  authentication"), and binding another interface without a token needs
  `allow_unauthenticated=True`.
- One slow, idle or vanished client must never stall the others. The queue is bounded: a request
  that finds it full gets an `overloaded` reply at once instead of a silent wait. A request whose
  connection closed is dropped before it reaches the model (and its result discarded if the pass
  already ran). Decoding and validation run on a small thread pool, never on the event loop, so
  a flood of large messages cannot delay health checks or other robots' replies. A connection
  that sends nothing for `idle_timeout_s` is closed, handshakes time out after
  `open_timeout_s`, and the connection cap is exact (counted at admission, not after it).
- Health: `/healthz` (liveness) answers 503 when a forward pass has been running for longer than
  `stall_after_s`; `/readyz` (readiness) reports the model, the queue depth and the time since
  the last forward pass, and answers 503 while the queue is full or the model is stalled.
- Every served chunk is finite and inside the checkpoint's action range (its stats' min/max,
  widened by `action_range_margin`): anything else is an `unsafe_actions` reply that says which
  dimension left the range, so a corrupted checkpoint cannot move a robot by 1e29.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from vla.policy import ReasoningUnavailableError, VLAPolicy
from vla.processor import ObservationMismatchError
from vla.robot import protocol
from vla.robot.msgpack_numpy import DecodeError, packb, unpackb
from vla.robot.protocol import InvalidObservation, RequestOptions, RequestSpec
from vla.robot.safety import ActionRange

log = logging.getLogger(__name__)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback: reachable from this machine only, unless asked otherwise
    port: int = 8000  # 0 picks a free port (see `PolicyServer.port`)
    token: str | None = None  # required in the handshake's Authorization header when set
    max_message_bytes: int = 8 * 2**20  # larger requests close the connection (code 1009)
    max_batch: int = 8  # requests per forward pass; 1 = no batching
    max_wait_ms: float = 2.0  # how long the first request of a batch waits for company
    max_connections: int = 64  # exact: connection 65 gets HTTP 503
    max_queue: int = 32  # requests waiting for the model; more get an `overloaded` reply
    idle_timeout_s: float | None = 60.0  # close a connection silent for this long (None: never)
    open_timeout_s: float = 10.0  # a TCP connection must finish its handshake within this
    stall_after_s: float = 30.0  # a forward pass longer than this makes /healthz answer 503
    key_map: Mapping[str, str] = field(default_factory=dict)  # robot key -> our key
    seed: int | None = None  # noise for requests without their own seed; None = OS entropy
    # Chunks outside the checkpoint's action range widened by this fraction are refused
    # (`ActionRange.from_stats`); None turns the check off.
    action_range_margin: float | None = 1.0
    allow_unauthenticated: bool = False  # needed to bind a non-loopback host without a token

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("idle_timeout_s", "open_timeout_s", "stall_after_s", "action_range_margin"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 (1 disables batching), got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_message_bytes < 1024:
            raise ValueError(
                f"max_message_bytes must be >= 1024 (an observation with images needs far more), "
                f"got {self.max_message_bytes}"
            )
        if self.token is not None and not self.token.strip():
            raise ValueError(
                "the token is set but empty, which would turn authentication off; set a real "
                "token, or unset it (None) to serve without authentication"
            )
        if (
            self.host not in LOOPBACK_HOSTS
            and self.token is None
            and not self.allow_unauthenticated
        ):
            raise ValueError(
                f"refusing to serve on {self.host!r} without a token: anyone who can reach the "
                f"port could drive the robot. Set a token (--token or VLA_SERVER_TOKEN), bind "
                f"127.0.0.1, or pass --allow-unauthenticated if the network is trusted"
            )


@dataclass
class ServerStats:
    """Counters the tests and the benchmark read; updated on the event loop only."""

    connections: int = 0
    requests: int = 0
    replies: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    forward_passes: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)
    dropped: int = 0  # requests whose connection closed before their reply was sent
    idle_closed: int = 0  # connections closed for sending nothing within idle_timeout_s
    refused_connections: int = 0  # over max_connections (HTTP 503)


@dataclass
class _Pending:
    observation: dict[str, Any]
    options: RequestOptions
    future: asyncio.Future[dict[str, Any]]  # the reply dict
    enqueued: float


class UnsafeActionsError(RuntimeError):
    """The model produced a chunk that must not reach a robot (non-finite, or out of range)."""


class PolicyServer:
    def __init__(self, policy: VLAPolicy, config: ServerConfig | None = None) -> None:
        self.policy = policy
        self.config = config or ServerConfig()
        model_config = policy.config
        # The server's key map first, then the checkpoint's own (its processor's) key map.
        own_map = dict(policy.processor.settings.key_map)
        key_map = dict(own_map)
        key_map.update(
            {robot: own_map.get(ours, ours) for robot, ours in self.config.key_map.items()}
        )
        self.spec = RequestSpec(
            image_keys=policy.processor.observation_spec.image_keys,
            state_dim=model_config.state_dim,
            key_map=key_map,
        )
        margin = self.config.action_range_margin
        self.action_range: ActionRange | None = (
            None if margin is None else policy.processor.action_range(margin)
        )
        self.stats = ServerStats()
        self.port: int | None = None
        self._noise_generator = torch.Generator()
        self._noise_generator.manual_seed(
            self.config.seed if self.config.seed is not None else int.from_bytes(os.urandom(8)) >> 1
        )
        self._executor: ThreadPoolExecutor | None = None  # the one inference thread
        self._decoder: ThreadPoolExecutor | None = None  # decoding + validation, off the loop
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued = asyncio.Event()  # set while the queue may hold something
        self._admitted: set[ServerConnection] = set()  # counted at the handshake, for the cap
        self._server: Server | None = None
        # Written by the inference thread, read by the health endpoints (floats: atomic enough).
        self._forward_started: float | None = None  # monotonic start of the running pass
        self._last_forward: float | None = None  # monotonic end of the last pass

    @property
    def metadata(self) -> dict[str, Any]:
        """Sent to every client on connect: what to send and what comes back.

        The one place the metadata is built: what the checkpoint says about itself (horizon,
        cameras, the observation spec, whether it can think, the range its actions stay in) and
        how this server is set up.
        """
        config = self.policy.config
        return {
            "protocol": protocol.PROTOCOL,
            "action_horizon": config.action_horizon,
            "action_dim": config.action_dim,
            "cameras": list(config.cameras),
            # the checkpoint's cameras at their trained resolution, as config.json holds them
            "observation": self.policy.processor.observation_spec.to_dict(),
            "request": self.spec.to_dict(),  # what a request must hold (keys, limits)
            "can_reason": self.policy.can_reason,  # False: think/reasoning get `unsupported`
            # every served action lies in [low, high]; None: the check is off
            "action_range": None if self.action_range is None else self.action_range.to_dict(),
            "max_message_bytes": self.config.max_message_bytes,
            "max_batch": self.config.max_batch,
            "max_queue": self.config.max_queue,
            "idle_timeout_s": self.config.idle_timeout_s,
            "fast_path": self.policy.fast_path,  # None: the eager reference
            "auth": self.config.token is not None,
        }

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> None:
        """Serve until SIGINT or SIGTERM, then close connections and return."""

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            await self.serve(stop, on_ready=self._announce)

        asyncio.run(main())

    def _announce(self, port: int) -> None:
        # One line on stdout that a parent process (`vla.cli.start_server_process`) waits for.
        print(f"serving on ws://{self.config.host}:{port}", flush=True)
        if self.config.host not in LOOPBACK_HOSTS and self.config.token is None:
            log.warning(
                "serving on %s without a token (--allow-unauthenticated): anyone who can reach "
                "this port can run the policy",
                self.config.host,
            )

    async def serve(
        self, stop: asyncio.Event, on_ready: Callable[[int], None] | None = None
    ) -> None:
        """Serve until `stop` is set; `on_ready(port)` runs once the socket listens."""
        self._queue.clear()
        self._queued = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vla-inference")
        self._decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vla-decode")
        batcher = asyncio.create_task(self._batch_loop(), name="vla-batcher")
        try:
            async with serve(
                self._handle,
                self.config.host,
                self.config.port,
                compression=None,
                max_size=self.config.max_message_bytes,
                # A robot has one request out at a time; buffering more frames per connection
                # would only let one client pile up memory (16 frames of 8 MiB by default).
                max_queue=2,
                open_timeout=self.config.open_timeout_s,
                process_request=self._process_request,
                logger=logging.getLogger("vla.serving.websockets"),
            ) as server:
                self._server = server
                self.port = server.sockets[0].getsockname()[1]
                if on_ready is not None:
                    on_ready(self.port)
                await stop.wait()
        finally:
            batcher.cancel()
            await asyncio.gather(batcher, return_exceptions=True)
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._decoder.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ HTTP: health, auth, cap
    def health(self) -> dict[str, Any]:
        """What /healthz and /readyz report: model, queue, and how long ago the model last ran."""
        now = time.monotonic()
        started, last = self._forward_started, self._last_forward
        running_s = None if started is None else now - started
        stalled = running_s is not None and running_s > self.config.stall_after_s
        depth = self._queue_depth()
        return {
            "live": not stalled,
            "ready": not stalled and depth < self.config.max_queue,
            "model_loaded": True,  # the server is only built around a loaded policy
            "checkpoint": self.policy.name,
            "queue_depth": depth,
            "max_queue": self.config.max_queue,
            "forward_running_s": running_s,
            "seconds_since_last_forward": None if last is None else now - last,
            "connections": len(self._open_connections()),
            "max_connections": self.config.max_connections,
        }

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path in ("/healthz", "/readyz"):
            health = self.health()
            ok = health["live"] if path == "/healthz" else health["ready"]
            response = connection.respond(
                HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                json.dumps(health) + "\n",
            )
            response.headers["Content-Type"] = "application/json"
            return response
        if self.config.token is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() not in ("bearer", "api-key") or not hmac.compare_digest(
                given.strip().encode(), self.config.token.encode()
            ):
                self.stats.errors["unauthorized"] += 1
                return connection.respond(
                    HTTPStatus.UNAUTHORIZED,
                    "missing or wrong token: send the header 'Authorization: Bearer <token>'\n",
                )
        # Counted here, at admission, so concurrent handshakes cannot all slip under the cap.
        if len(self._open_connections()) >= self.config.max_connections:
            self.stats.refused_connections += 1
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the server has {self.config.max_connections} connections already\n",
            )
        self._admitted.add(connection)
        return None

    def _open_connections(self) -> set[ServerConnection]:
        self._admitted = {c for c in self._admitted if c.state is not State.CLOSED}
        return self._admitted

    # ------------------------------------------------------------------ websocket
    async def _handle(self, connection: ServerConnection) -> None:
        self.stats.connections += 1
        closed = asyncio.ensure_future(connection.wait_closed())
        try:
            await connection.send(packb(self.metadata))
            while True:
                try:
                    message = await asyncio.wait_for(
                        connection.recv(), timeout=self.config.idle_timeout_s
                    )
                except TimeoutError:
                    self.stats.idle_closed += 1
                    await connection.close(
                        protocol.IDLE_CLOSE_CODE,
                        f"no request for {self.config.idle_timeout_s} s; reconnect to continue",
                    )
                    return
                reply = asyncio.ensure_future(self._reply(message))
                await asyncio.wait((reply, closed), return_when=asyncio.FIRST_COMPLETED)
                if not reply.done():  # the client left: its request never reaches the model
                    reply.cancel()
                    self.stats.dropped += 1
                    await asyncio.gather(reply, return_exceptions=True)
                    return
                await connection.send(reply.result())
        except ConnectionClosed:
            pass  # the client left, possibly mid-request: its chunk (if any) is dropped
        finally:
            closed.cancel()
            self._admitted.discard(connection)

    async def _reply(self, message: str | bytes) -> str | bytes:
        """The reply frame for one request; never raises for anything the client sent."""
        self.stats.requests += 1
        if isinstance(message, str):
            return self._error(
                protocol.BAD_FRAME,
                "got a text frame; send the observation as a binary msgpack frame "
                "(vla.robot.PolicyClient and openpi clients do)",
            )
        loop = asyncio.get_running_loop()
        try:  # off the event loop: a large message must not delay anyone else
            observation, options = await loop.run_in_executor(self._decoder, self._decode, message)
        except DecodeError as error:
            return self._error(protocol.BAD_FRAME, str(error))
        except InvalidObservation as error:
            return self._error(protocol.INVALID_OBSERVATION, str(error))
        except Exception as error:  # a validation bug: still an error reply, still serving
            log.exception("validating a request failed")
            return self._error(protocol.INTERNAL, f"{type(error).__name__}: {error}")
        depth = self._queue_depth()
        if depth >= self.config.max_queue:
            return self._error(
                protocol.OVERLOADED,
                f"{depth} requests are already waiting for the model (max_queue "
                f"{self.config.max_queue}); retry shortly, or run more servers",
            )
        pending = _Pending(observation, options, loop.create_future(), time.perf_counter())
        self._queue.append(pending)
        self._queued.set()
        try:
            reply = await pending.future  # cancelling this task cancels the future too
        except ReasoningUnavailableError as error:  # think/reuse asked of an act-only checkpoint
            return self._error(protocol.UNSUPPORTED, str(error))
        except ObservationMismatchError as error:  # e.g. a camera at another aspect ratio
            return self._error(protocol.INVALID_OBSERVATION, str(error))
        except UnsafeActionsError as error:
            return self._error(protocol.UNSAFE_ACTIONS, str(error))
        except Exception as error:  # a model failure on a validated observation
            log.exception("inference failed")
            return self._error(
                protocol.INTERNAL, f"inference failed: {type(error).__name__}: {error}"
            )
        self.stats.replies += 1
        return packb(reply)

    def _decode(self, message: bytes) -> tuple[dict[str, Any], RequestOptions]:
        return self.spec.validate(unpackb(message))

    def _error(self, error_type: str, message: str) -> str:
        self.stats.errors[error_type] += 1
        return protocol.error_reply(error_type, message)

    # ------------------------------------------------------------------ batching
    def _queue_depth(self) -> int:
        """Requests still waiting; those whose connection closed are forgotten here."""
        if any(pending.future.done() for pending in self._queue):
            self._queue = collections.deque(p for p in self._queue if not p.future.done())
        return len(self._queue)

    async def _next_request(self, timeout: float | None) -> _Pending | None:
        """The oldest live request, waiting up to `timeout` s (None: forever) for one."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            while self._queue:
                pending = self._queue.popleft()
                if not pending.future.done():
                    return pending
            self._queued.clear()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._queued.wait(), remaining)
            except TimeoutError:
                return None

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next_request(None)
            assert first is not None
            batch = [first]
            deadline = loop.time() + self.config.max_wait_ms / 1000
            while len(batch) < self.config.max_batch:
                pending = await self._next_request(max(0.0, deadline - loop.time()))
                if pending is None:
                    break
                batch.append(pending)
            for kind in ("act", "reuse", "think"):  # one policy call per kind, fastest first
                group = [p for p in batch if p.options.kind == kind and not p.future.done()]
                if group:
                    await self._run_batch(group)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            out = await loop.run_in_executor(self._executor, self._infer, batch)
        except Exception as error:
            if len(batch) > 1 and not isinstance(error, ReasoningUnavailableError):
                # isolate the request that broke the pass (an act-only checkpoint asked to think
                # fails every request of the group alike: no retries for that)
                for pending in batch:
                    if not pending.future.done():
                        await self._run_batch([pending])
                return
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        self.stats.forward_passes += 1
        self.stats.batch_sizes[len(batch)] += 1
        infer_ms = (time.perf_counter() - started) * 1000
        for index, pending in enumerate(batch):
            if pending.future.done():  # cancelled: the connection went away
                continue
            chunk = out["actions"][index]  # (H, A)
            problem = self._unsafe(chunk)
            if problem is not None:  # never send a robot NaN, Inf or out-of-range actions
                pending.future.set_exception(UnsafeActionsError(problem))
                continue
            reasoning = out["reasoning"]
            pending.future.set_result(
                {
                    "actions": chunk,
                    "reasoning": None if reasoning is None else reasoning[index],
                    "timing": dict(out["timing"]),  # the policy's stages, for the whole pass
                    "server_timing": {
                        "infer_ms": infer_ms,
                        "queue_ms": (started - pending.enqueued) * 1000,
                        "batch_size": len(batch),
                    },
                }
            )

    def _unsafe(self, chunk: np.ndarray) -> str | None:
        """Why this (H, A) chunk must not be served, or None."""
        if not np.isfinite(chunk).all():
            return "the model produced non-finite actions for this observation"
        if self.action_range is None:
            return None
        return self.action_range.violation(chunk, where=self.policy.name)

    def _infer(self, batch: list[_Pending]) -> dict[str, Any]:
        """One `VLAPolicy.infer` call (inference thread) for requests of one kind: its dict, with
        "actions" (B, H, A) float32 in robot units."""
        self._forward_started = time.monotonic()
        try:
            return self._infer_batch(batch)
        finally:
            self._forward_started, self._last_forward = None, time.monotonic()

    def _infer_batch(self, batch: list[_Pending]) -> dict[str, Any]:
        config = self.policy.config
        shape = (config.action_horizon, config.action_dim)
        noise = torch.stack(
            [
                torch.randn(shape, generator=torch.Generator().manual_seed(pending.options.seed))
                if pending.options.seed is not None
                else torch.randn(shape, generator=self._noise_generator)
                for pending in batch
            ]
        ).to(self.policy.device)  # (B, H, A)
        first = batch[0].options
        out = self.policy.infer(
            [pending.observation for pending in batch],
            think=first.think,
            reasoning=None
            if first.reasoning is None
            else [str(pending.options.reasoning) for pending in batch],
            noise=noise,
        )
        actions = np.asarray(out["actions"], dtype=np.float32)
        if actions.shape != (len(batch), *shape):
            raise RuntimeError(f"the policy returned actions of shape {actions.shape}")
        reasoning = out["reasoning"]
        if (reasoning is None) != (first.kind == "act") or (
            reasoning is not None and len(reasoning) != len(batch)
        ):
            raise RuntimeError(
                f"the policy returned reasoning {reasoning!r:.200} for a {first.kind!r} call"
            )
        return {**out, "actions": actions}


def reference_noise(seed: int, horizon: int, action_dim: int) -> torch.Tensor:
    """The (1, H, A) noise the server uses for a request with `{"seed": seed}` (for checks)."""
    return torch.randn((horizon, action_dim), generator=torch.Generator().manual_seed(seed))[None]


class BackgroundServer:
    """A `PolicyServer` on its own event loop thread: for tests, benchmarks and notebooks.

    with BackgroundServer(server) as running:
        client = PolicyClient(f"ws://127.0.0.1:{running.port}")
    """

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="vla-server", daemon=True)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.server.serve(self._stop, on_ready=lambda port: self._ready.set())

        try:
            asyncio.run(main())
        except BaseException as error:  # surfaced by start()/stop()
            self._error = error
        finally:
            self._ready.set()

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the server did not start: {self._error!r}")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._error is not None:
            raise RuntimeError("the server thread failed") from self._error

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
