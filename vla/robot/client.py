"""The robot-side client of `vla serve`: numpy, msgpack and websockets only (no torch).

    from vla.robot import PolicyClient
    with PolicyClient("ws://127.0.0.1:8000", token=None) as client:
        print(client.metadata["action_horizon"])
        reply = client.infer(observation)   # {"actions": float32 (H, 7), "reasoning": None, ...}
        reply = client.infer(observation, think=True)   # "reasoning": the generated chain

Why so few dependencies: robot computers run a real-time stack and often an old Python; the
client must install there without CUDA wheels. It speaks the openpi websocket protocol (see
`vla.robot.protocol`), so it also works against an openpi policy server.

A connection that failed or timed out is dropped and reopened by the next `infer`: a reply that
arrives after its request timed out must never be read as the answer to the next request.

`timeout` bounds the whole round trip: connecting, sending and receiving. Sending is the part a
plain websocket cannot bound: with a frozen server the socket's buffers fill and `send` blocks
forever, holding the connection's lock (so even `close` would block). A timer therefore shuts the
socket down when the deadline passes, which fails the blocked send at once; `close` is bounded
the same way. A connection the server closed while it sat idle (its `idle_timeout_s`) is reopened
before the next request instead of failing it, and so is one whose idle close crossed the
request on the wire (the server never read that request, so it is sent once more).
"""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect

from vla.robot import protocol
from vla.robot.msgpack_numpy import packb, unpackb
from vla.robot.protocol import InvalidObservation, RequestOptions, RequestSpec

__all__ = ["InvalidObservation", "PolicyClient", "ServerError"]


class ServerError(RuntimeError):
    """The server answered a request with an error reply (`type` is one of protocol's types)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.type = error_type
        self.message = message


class PolicyClient:
    def __init__(
        self,
        uri: str = "ws://127.0.0.1:8000",
        token: str | None = None,
        open_timeout: float = 10.0,
        timeout: float | None = 30.0,
        validate: bool = True,
        close_timeout: float = 1.0,
    ) -> None:
        """Connect and read the server's metadata.

        `timeout` bounds each `infer` call, connecting (again) included: it returns or raises
        within about that long, whatever the server does (None waits forever). `close_timeout`
        bounds `close`. `validate` checks each
        observation against the server's spec before sending, so a robot-side mistake fails
        here, with the same message the server would send, without a network round trip.
        """
        self.uri = uri
        self.token = token
        self.open_timeout = open_timeout
        self.timeout = timeout
        self.validate = validate
        self.close_timeout = close_timeout
        self._connection: ClientConnection | None = None
        self.metadata: dict[str, Any] = {}
        self._connect(open_timeout)

    @property
    def spec(self) -> RequestSpec | None:
        """What the server's model reads, or None for a server that does not say (e.g. openpi)."""
        payload = self.metadata.get("request")
        return RequestSpec.from_dict(payload) if isinstance(payload, Mapping) else None

    def _connect(self, timeout: float) -> ClientConnection:
        """Open a connection and read the metadata, all within `timeout` seconds."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        started = time.monotonic()
        try:
            connection = connect(
                self.uri,
                additional_headers=headers,
                compression=None,
                max_size=None,  # replies are small; the server bounds what we may send
                open_timeout=timeout,
                close_timeout=self.close_timeout,
            ).__enter__()  # long-lived, closed by close(); websockets >= 17.1 asks for the enter
        except InvalidStatus as error:
            status = error.response.status_code
            body = error.response.body.decode(errors="replace").strip()
            raise ConnectionRefusedError(
                f"{self.uri} refused the connection: HTTP {status} {body}"
            ) from None
        try:
            remaining = max(0.0, timeout - (time.monotonic() - started))
            metadata = unpackb(connection.recv(timeout=remaining))
        except (TimeoutError, ConnectionClosed) as error:
            _abort(connection)
            raise ConnectionError(f"{self.uri} sent no metadata: {error!r}") from None
        if not isinstance(metadata, dict):
            connection.close()
            raise ConnectionError(f"{self.uri} sent metadata that is not a map: {metadata!r:.80}")
        self.metadata = metadata
        self._connection = connection
        return connection

    def infer(
        self,
        observation: Mapping[str, Any],
        seed: int | None = None,
        *,
        think: bool = False,
        reasoning: str | None = None,
    ) -> dict[str, Any]:
        """One round trip: the policy's reply for this observation, plus `client_timing`.

        The reply is `VLAPolicy.infer`'s dict for one observation: "actions" (H, A) float32,
        "reasoning" (the chain generated with `think=True`, or the one passed as `reasoning`;
        else None) and "timing", with the server's "server_timing" (see `vla.robot.protocol`).
        Raises `ServerError` for an error reply (the connection stays usable; type
        `unsupported` when the checkpoint cannot think), `TimeoutError` or `ConnectionError`
        when the server does not answer (the next call reconnects).
        """
        message: dict[str, Any] = dict(observation)
        options = RequestOptions(
            seed=None if seed is None else int(seed), think=think, reasoning=reasoning
        ).to_dict()
        if options:
            message[protocol.OPTIONS_KEY] = options
        spec = self.spec
        if self.validate and spec is not None:
            spec.validate(message)
        payload = packb(message)
        limit = self.metadata.get("max_message_bytes")
        if isinstance(limit, int) and len(payload) > limit:
            raise ValueError(
                f"the observation is {len(payload)} bytes, over the server's limit of {limit}; "
                f"send smaller images or raise the server's --max-message-mb"
            )
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        started = time.perf_counter()
        try:
            reply = self._round_trip(payload, deadline)
        except TimeoutError:
            self._drop()
            raise TimeoutError(f"{self.uri} did not answer within {self.timeout} s") from None
        except ConnectionClosed as error:
            self._drop()
            raise ConnectionError(f"{self.uri} closed the connection: {error}") from error
        except OSError:
            self._drop()
            raise
        if isinstance(reply, str):
            raise ServerError(*protocol.parse_error_reply(reply))
        result = unpackb(reply)
        if not isinstance(result, dict) or not isinstance(result.get("actions"), np.ndarray):
            raise ServerError(protocol.INTERNAL, f"a reply without actions: {result!r:.200}")
        result["client_timing"] = {"round_trip_ms": (time.perf_counter() - started) * 1000}
        return result

    def _round_trip(self, payload: bytes, deadline: float | None) -> str | bytes:
        """Send one request and receive its reply before `deadline` (monotonic; None: never)."""

        def remaining() -> float | None:
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            return left

        for attempt in (1, 2):
            connection = self._connection
            if connection is not None and connection.state is not State.OPEN:
                self._drop()  # e.g. closed by the server's idle timeout: reopen, don't fail
                connection = None
            if connection is None:
                left = remaining()
                connection = self._connect(
                    self.open_timeout if left is None else min(left, self.open_timeout)
                )
            try:
                _bounded(connection, remaining(), functools.partial(connection.send, payload))
                return connection.recv(timeout=remaining())
            except ConnectionClosed as error:
                # The idle close can cross our request on the wire: the server closed before
                # reading it, so no reply exists and sending it again is safe (once).
                if attempt == 2 or not _closed_for_idleness(error):
                    raise
                self._drop()
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                _bounded(connection, self.close_timeout, connection.close)
            except (TimeoutError, OSError, ConnectionClosed):
                pass  # aborted: the socket is shut down either way

    def reset(self) -> None:
        """openpi's client API; the server keeps no per-episode state, so there is nothing to do."""

    def close(self) -> None:
        """Close the connection; returns within about `close_timeout` s, even mid-send."""
        self._drop()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _closed_for_idleness(error: ConnectionClosed) -> bool:
    """Whether the server closed this connection because no request came (code 1001)."""
    return error.rcvd is not None and error.rcvd.code == protocol.IDLE_CLOSE_CODE


def _abort(connection: ClientConnection) -> None:
    """Shut the socket down without the connection's lock: a send blocked on a frozen peer fails
    at once, and the connection closes without a handshake."""
    try:
        connection.socket.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed
    connection.close_socket()


def _bounded(connection: ClientConnection, seconds: float | None, action: Callable[[], Any]) -> Any:
    """`action()`, with the connection aborted once it has run `seconds`; raises TimeoutError
    when that happened (whatever the aborted action raised instead)."""
    if seconds is None:
        return action()
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _abort(connection)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        result = action()
    except Exception:
        if expired.is_set():
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()
    if expired.is_set():
        raise TimeoutError
    return result
