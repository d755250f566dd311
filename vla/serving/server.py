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
  message is buffered.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
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

from vla.policy import ReasoningUnavailableError, VLAPolicy
from vla.processor import ObservationMismatchError
from vla.robot import protocol
from vla.robot.msgpack_numpy import DecodeError, packb, unpackb
from vla.robot.protocol import InvalidObservation, RequestOptions, RequestSpec

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
    max_connections: int = 64
    key_map: Mapping[str, str] = field(default_factory=dict)  # robot key -> our key
    seed: int | None = None  # noise for requests without their own seed; None = OS entropy

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 (1 disables batching), got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_message_bytes < 1024:
            raise ValueError(
                f"max_message_bytes must be >= 1024 (an observation with images needs far more), "
                f"got {self.max_message_bytes}"
            )
        if self.token is not None and not self.token:
            raise ValueError("token must be a non-empty string, or None for no authentication")


@dataclass
class ServerStats:
    """Counters the tests and the benchmark read; updated on the event loop only."""

    connections: int = 0
    requests: int = 0
    replies: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    forward_passes: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)


@dataclass
class _Pending:
    observation: dict[str, Any]
    options: RequestOptions
    future: asyncio.Future[dict[str, Any]]  # the reply dict
    enqueued: float


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
        self.stats = ServerStats()
        self.port: int | None = None
        self._noise_generator = torch.Generator()
        self._noise_generator.manual_seed(
            self.config.seed if self.config.seed is not None else int.from_bytes(os.urandom(8)) >> 1
        )
        self._executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._server: Server | None = None

    @property
    def metadata(self) -> dict[str, Any]:
        """Sent to every client on connect: what to send and what comes back.

        The one place the metadata is built: what the checkpoint says about itself (horizon,
        cameras, the observation spec, whether it can think) and how this server is set up.
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
            "max_message_bytes": self.config.max_message_bytes,
            "max_batch": self.config.max_batch,
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
                "serving on %s without a token: anyone who can reach this port can run the "
                "policy; set --token (or VLA_SERVER_TOKEN) or bind to 127.0.0.1",
                self.config.host,
            )

    async def serve(
        self, stop: asyncio.Event, on_ready: Callable[[int], None] | None = None
    ) -> None:
        """Serve until `stop` is set; `on_ready(port)` runs once the socket listens."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vla-inference")
        batcher = asyncio.create_task(self._batch_loop(), name="vla-batcher")
        try:
            async with serve(
                self._handle,
                self.config.host,
                self.config.port,
                compression=None,
                max_size=self.config.max_message_bytes,
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

    # ------------------------------------------------------------------ HTTP: health, auth
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path == "/healthz":
            return connection.respond(HTTPStatus.OK, "OK\n")
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
        if self._server is not None and len(self._server.connections) > self.config.max_connections:
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the server has {self.config.max_connections} connections already\n",
            )
        return None

    # ------------------------------------------------------------------ websocket
    async def _handle(self, connection: ServerConnection) -> None:
        self.stats.connections += 1
        try:
            await connection.send(packb(self.metadata))
            async for message in connection:
                await connection.send(await self._reply(message))
        except ConnectionClosed:
            pass  # the client left, possibly mid-request: its chunk (if any) is dropped

    async def _reply(self, message: str | bytes) -> str | bytes:
        """The reply frame for one request; never raises for anything the client sent."""
        self.stats.requests += 1
        if isinstance(message, str):
            return self._error(
                protocol.BAD_FRAME,
                "got a text frame; send the observation as a binary msgpack frame "
                "(vla.robot.PolicyClient and openpi clients do)",
            )
        try:
            observation, options = self.spec.validate(unpackb(message))
        except DecodeError as error:
            return self._error(protocol.BAD_FRAME, str(error))
        except InvalidObservation as error:
            return self._error(protocol.INVALID_OBSERVATION, str(error))
        except Exception as error:  # a validation bug: still an error reply, still serving
            log.exception("validating a request failed")
            return self._error(protocol.INTERNAL, f"{type(error).__name__}: {error}")
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        pending = _Pending(observation, options, loop.create_future(), time.perf_counter())
        await self._queue.put(pending)
        try:
            reply = await pending.future
        except ReasoningUnavailableError as error:  # think/reuse asked of an act-only checkpoint
            return self._error(protocol.UNSUPPORTED, str(error))
        except ObservationMismatchError as error:  # e.g. a camera at another aspect ratio
            return self._error(protocol.INVALID_OBSERVATION, str(error))
        except Exception as error:  # a model failure on a validated observation
            log.exception("inference failed")
            return self._error(
                protocol.INTERNAL, f"inference failed: {type(error).__name__}: {error}"
            )
        self.stats.replies += 1
        return packb(reply)

    def _error(self, error_type: str, message: str) -> str:
        self.stats.errors[error_type] += 1
        return protocol.error_reply(error_type, message)

    # ------------------------------------------------------------------ batching
    async def _batch_loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.config.max_wait_ms / 1000
            while len(batch) < self.config.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            batch = [pending for pending in batch if not pending.future.done()]
            for kind in ("act", "reuse", "think"):  # one policy call per kind, fastest first
                group = [pending for pending in batch if pending.options.kind == kind]
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
            if not np.isfinite(chunk).all():  # never send a robot NaN or Inf actions
                pending.future.set_exception(
                    FloatingPointError("the model produced non-finite actions for this observation")
                )
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

    def _infer(self, batch: list[_Pending]) -> dict[str, Any]:
        """One `VLAPolicy.infer` call (inference thread) for requests of one kind: its dict, with
        "actions" (B, H, A) float32 in robot units."""
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
