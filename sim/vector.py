"""Run K environments in K worker processes so evaluation can batch one policy across them.

Why processes and not gymnasium's own vector envs: MuJoCo + EGL rendering can segfault or hang a
process, and an evaluation of hundreds of episodes must survive that. Every failure of a worker
(an exception, a dead process, a step that exceeds `step_timeout`) is returned as an `EnvResult`
with `crashed=True`, counted in `crash_count`/`crash_log`, and the worker is replaced by a fresh
one built from the same `env_fn`. Nothing is dropped silently and nothing is fatal to the parent.
The reverse holds too: workers end when the parent dies, even by SIGKILL and even mid-step
(`sim.parent_watch`).

The API is explicit and never auto-resets, because evaluation owns the episodes (which init
state, when an episode ends, which envs need a new action chunk)::

    with SubprocVectorEnv([partial(make_env, i) for i in range(k)]) as venv:
        results = venv.reset(range(k), options=[{"init_state": i} for i in range(k)])
        stepped = venv.step({i: action_i, j: action_j})      # only i and j step, in parallel
        if stepped[i].crashed:                               # env i was replaced:
            venv.reset([i], options=[{"init_state": i}])     # reset it before stepping again

After a crash (or before the first reset) an env must be reset by the caller; stepping it earlier
returns a `crashed=True` result whose `error` says so, at once, without a round trip to the
worker. Such usage errors are not counted as crashes.

Start method: "spawn" by default. Forking a parent that already holds an EGL/OpenGL context, a CUDA
context (the policy) or threads (torch, MuJoCo) copies locks and driver state that are invalid in
the child, which shows up as hangs or segfaults at the first render. "spawn" starts each worker as
a fresh interpreter, so every worker creates its own EGL context, and it sees `os.environ` as it is
when the worker starts (e.g. `MUJOCO_GL`, `MUJOCO_EGL_DEVICE_ID`). "forkserver" is also safe (it
forks from a clean server process) and restarts a little faster, but that server snapshots the
environment variables when it is first started, so later changes in the parent are not seen.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import gymnasium as gym
import numpy as np

from sim.parent_watch import ParentWatch

__all__ = ["EnvCrashedError", "EnvResult", "SubprocVectorEnv", "make_vector_env"]

logger = logging.getLogger(__name__)

EnvFn = Callable[[], gym.Env]
# A typed request to a worker: a picklable callable (e.g. a frozen dataclass with __call__) that
# the worker applies to its env. Unlike a method name in a string, its fields are checked where
# it is built, and a typo fails in the parent, not in a worker's reply.
EnvCommand = Callable[[gym.Env], Any]


@dataclass
class EnvResult:
    """What one env returned for one reset or step, or why it could not.

    `crashed=True` means this env's episode is void (obs is None) and the env must be reset
    before it is stepped again; `error` says what happened.
    """

    obs: dict[str, Any] | None
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    crashed: bool = False
    error: str | None = None

    @classmethod
    def failure(cls, error: str) -> EnvResult:
        return cls(obs=None, crashed=True, error=error)


class EnvCrashedError(RuntimeError):
    """`call` has no result to flag, so a worker that dies during it is raised instead."""


# --------------------------------------------------------------------------- worker process side


def _exception_text(exc: BaseException) -> tuple[str, str]:
    """(last traceback line, full traceback): the short one goes into results, the long one to logs."""
    lines = traceback.format_exception(exc)
    return lines[-1].strip(), "".join(lines)


def _do_reset(env: gym.Env, payload: tuple[int | None, dict | None]) -> tuple[Any, ...]:
    seed, options = payload
    return env.reset(seed=seed, options=options)


def _do_step(env: gym.Env, action: np.ndarray) -> tuple[Any, ...]:
    return env.step(action)


def _do_call(env: gym.Env, payload: tuple[str, tuple, dict]) -> Any:
    name, args, kwargs = payload
    # gymnasium>=1.0 wrappers no longer forward attribute access; get_wrapper_attr does.
    getter = getattr(env, "get_wrapper_attr", None)
    attr = getter(name) if getter is not None else getattr(env, name)
    return attr(*args, **kwargs) if callable(attr) else attr


def _do_run(env: gym.Env, command: EnvCommand) -> Any:
    return command(env)


_HANDLERS: dict[str, Callable[[gym.Env, Any], Any]] = {
    "reset": _do_reset,
    "step": _do_step,
    "call": _do_call,
    "run": _do_run,
}


def _send_reply(conn: Connection, ok: bool, payload: Any) -> None:
    """Pickling happens before any byte is written, so an unpicklable result becomes an error."""
    try:
        conn.send(("ok" if ok else "error", payload))
    except (BrokenPipeError, EOFError):
        raise
    except Exception as exc:  # e.g. an info value that cannot be pickled
        conn.send(("error", _exception_text(exc)))


def _close_env(env: gym.Env | None) -> None:
    if env is None:
        return
    try:
        env.close()
    except Exception:
        logger.exception("env.close() failed in worker")


def _worker_main(conn: Connection, env_fn: EnvFn, parent: ParentWatch) -> None:
    """Serve reset/step/call/close requests; exactly one reply per request."""
    # A closed pipe ends an idle worker; this also ends one that is busy when the parent dies.
    parent.start()
    # Ctrl-C goes to the whole process group: let the parent decide, and close us cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    env: gym.Env | None = None
    build_error: tuple[str, str] | None = None
    try:
        env = env_fn()
    except Exception as exc:
        build_error = _exception_text(exc)
    try:
        while True:
            try:
                command, payload = conn.recv()
            except EOFError:  # the parent is gone: nothing left to serve
                break
            if command == "close":
                _close_env(env)
                conn.send(("ok", None))
                break
            if env is None:
                short, full = build_error or ("env was not built", "")
                _send_reply(conn, False, (f"building the env failed: {short}", full))
                continue
            try:
                result = _HANDLERS[command](env, payload)
            except Exception as exc:
                _send_reply(conn, False, _exception_text(exc))
            else:
                _send_reply(conn, True, result)
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        pass
    finally:
        conn.close()


# --------------------------------------------------------------------------- parent side


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection


class _WorkerFailed(Exception):
    """Internal: a request got no valid reply; `str(self)` is the error for the result."""

    def __init__(self, error: str, raised: bool):
        super().__init__(error)
        self.raised = raised  # True: the env raised (process healthy); False: process lost


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit code unknown"
    if exitcode < 0:
        try:
            return f"exit code {exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"exit code {exitcode}"
    return f"exit code {exitcode}"


class SubprocVectorEnv:
    """K gymnasium envs, one per process, stepped in parallel and replaced when they crash.

    `env_fns[i]` builds env i inside its worker, so it must be picklable (a module-level function
    or a `functools.partial` of one; no lambdas or closures). `step_timeout` bounds one step of all
    the requested envs (None: wait forever); `reset_timeout` bounds reset and `call`, which on a
    fresh worker also include building the env. `close_timeout` is how long workers may take to
    close their env before they are killed.
    """

    def __init__(
        self,
        env_fns: Sequence[EnvFn],
        *,
        context: str = "spawn",
        step_timeout: float | None = 60.0,
        reset_timeout: float | None = 300.0,
        close_timeout: float = 5.0,
    ) -> None:
        if len(env_fns) == 0:
            raise ValueError("SubprocVectorEnv needs at least one env_fn")
        self._env_fns = list(env_fns)
        self._ctx = mp.get_context(context)
        self.step_timeout = step_timeout
        self.reset_timeout = reset_timeout
        self.close_timeout = close_timeout
        self.crash_log: list[tuple[int, str]] = []
        self._needs_reset = [True] * len(self._env_fns)
        self._workers: list[_Worker] = []
        self._closed = False
        try:
            for index in range(len(self._env_fns)):
                self._workers.append(self._start_worker(index))
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- public API

    @property
    def num_envs(self) -> int:
        return len(self._env_fns)

    @property
    def crash_count(self) -> int:
        """Worker failures so far (exceptions, deaths, timeouts); usage errors are not counted."""
        return len(self.crash_log)

    @property
    def processes(self) -> list[BaseProcess]:
        """The current worker processes (replacements included), e.g. to check their health."""
        return [worker.process for worker in self._workers]

    def reset(
        self,
        indices: Iterable[int],
        seeds: Sequence[int | None] | None = None,
        options: Sequence[dict | None] | None = None,
    ) -> list[EnvResult]:
        """Reset the given envs in parallel; results are in the order of `indices`."""
        indices = self._check_indices(indices)
        seeds = self._per_index(seeds, indices, "seeds")
        options = self._per_index(options, indices, "options")
        requests = {
            i: ("reset", (seed, opts))
            for i, seed, opts in zip(indices, seeds, options, strict=True)
        }
        replies = self._exchange(requests, self.reset_timeout, "reset")
        results = []
        for index in indices:
            reply = replies[index]
            if isinstance(reply, EnvResult):
                results.append(reply)
                continue
            obs, info = reply
            self._needs_reset[index] = False
            results.append(EnvResult(obs=obs, info=dict(info)))
        return results

    def step(self, actions: Mapping[int, np.ndarray]) -> dict[int, EnvResult]:
        """Step only the envs in `actions`, all at once: send every action, then collect."""
        indices = self._check_indices(actions.keys())
        requests = {index: ("step", np.asarray(actions[index])) for index in indices}
        results: dict[int, EnvResult] = {}
        for index, reply in self._exchange_with_reset_envs(requests, "step").items():
            if isinstance(reply, EnvResult):
                results[index] = reply
                continue
            obs, reward, terminated, truncated, info = reply
            results[index] = EnvResult(
                obs=obs,
                reward=float(reward),
                terminated=bool(terminated),
                truncated=bool(truncated),
                info=dict(info),
            )
        return results

    def run_each(self, commands: Mapping[int, EnvCommand]) -> dict[int, Any]:
        """Apply `commands[i](env)` in every worker i at once, in parallel.

        For commands that advance an episode (e.g. executing a chunk of actions), so failures
        follow `step`: a worker that raises, dies or times out is replaced and its entry is an
        `EnvResult` failure (the env must be reset), never an exception.
        """
        indices = self._check_indices(commands.keys())
        requests = {index: ("run", commands[index]) for index in indices}
        names = sorted({type(command).__name__ for command in commands.values()})
        return self._exchange_with_reset_envs(requests, "/".join(names) or "run")

    def call(self, index: int, method_name: str, *args: Any, **kwargs: Any) -> Any:
        """Call `env.method_name(*args, **kwargs)` in worker `index` (or read the attribute).

        An exception from the method is re-raised here as RuntimeError and the env is kept (its
        state is not known to be broken); a worker that dies or times out is replaced and
        reported as a crash, and EnvCrashedError is raised since there is no result to flag.
        """
        (index,) = self._check_indices([index])
        request = {index: ("call", (method_name, args, kwargs))}
        reply = self._exchange(request, self.reset_timeout, "call", replace_on_raise=False)[index]
        if isinstance(reply, EnvResult):
            raise EnvCrashedError(reply.error)
        return reply

    def close(self) -> None:
        """Close every env and end every worker; hung workers are killed. Safe to call twice."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        _shutdown(getattr(self, "_workers", []), self.close_timeout)

    def __enter__(self) -> SubprocVectorEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"crashes={self.crash_count}"
        return f"SubprocVectorEnv(num_envs={self.num_envs}, {state})"

    # ---------------------------------------------------------------- internals

    def _start_worker(self, index: int) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main,
            args=(child_conn, self._env_fns[index], ParentWatch.here(self._ctx.get_start_method())),
            name=f"SubprocVectorEnv-{index}",
            daemon=True,  # ended at the parent's exit if close() is skipped; ParentWatch if killed
        )
        process.start()
        # Only the child may hold its end, so that its death reads as EOF here.
        child_conn.close()
        return _Worker(process, parent_conn)

    def _check_indices(self, indices: Iterable[int]) -> list[int]:
        if self._closed:
            raise RuntimeError("SubprocVectorEnv is closed")
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < self.num_envs]
        if bad:
            raise IndexError(f"env indices {bad} out of range for {self.num_envs} envs")
        if len(set(indices)) != len(indices):
            raise ValueError(f"duplicate env indices in {indices}")
        return indices

    @staticmethod
    def _per_index(values: Sequence | None, indices: list[int], name: str) -> list:
        if values is None:
            return [None] * len(indices)
        values = list(values)
        if len(values) != len(indices):
            raise ValueError(f"{len(values)} {name} given for {len(indices)} env indices")
        return values

    def _exchange_with_reset_envs(
        self, requests: Mapping[int, tuple[str, Any]], what: str
    ) -> dict[int, Any]:
        """`_exchange` for requests that advance an episode: an env that is new or was replaced
        after a crash gets an `EnvResult` failure (a usage error, not a crash) instead of the
        request. Replies are in the order of `requests`."""
        replies: dict[int, Any] = {}
        ready = {}
        for index, request in requests.items():
            if self._needs_reset[index]:
                replies[index] = EnvResult.failure(
                    f"env {index} must be reset before {what} (it is new or was replaced after "
                    "a crash)"
                )
            else:
                ready[index] = request
        replies.update(self._exchange(ready, self.step_timeout, what))
        return {index: replies[index] for index in requests}

    def _exchange(
        self,
        requests: Mapping[int, tuple[str, Any]],
        timeout: float | None,
        what: str,
        replace_on_raise: bool = True,
    ) -> dict[int, Any]:
        """Send all requests, then collect all replies within one shared deadline.

        A reply is the handler's return value, or an `EnvResult.failure` for an env whose worker
        failed (that worker has already been replaced and logged).
        """
        failures: dict[int, _WorkerFailed] = {}
        replies: dict[int, Any] = {}
        outstanding: set[int] = set()
        try:
            for index, request in requests.items():
                try:
                    self._workers[index].conn.send(request)
                    outstanding.add(index)
                except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
                    failures[index] = self._lost(index, what)
            deadline = None if timeout is None else time.monotonic() + timeout
            for index in requests:
                if index not in outstanding:
                    continue
                try:
                    replies[index] = self._receive(index, deadline, timeout, what)
                except _WorkerFailed as failure:
                    failures[index] = failure
                outstanding.discard(index)
        finally:
            # Interrupted (e.g. Ctrl-C) with replies still in flight: those would be read as the
            # answer to the next request, so the workers are replaced instead.
            for index in outstanding:
                self._kill(index)
                self._restart(index)
        for index, failure in failures.items():
            if not failure.raised or replace_on_raise:
                replies[index] = self._crashed(index, str(failure))
            else:
                raise RuntimeError(f"env {index}: {failure}")
        return replies

    def _receive(self, index: int, deadline: float | None, timeout: float | None, what: str) -> Any:
        conn = self._workers[index].conn
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not conn.poll(remaining):
            self._kill(index)
            raise _WorkerFailed(f"{what} timed out after {timeout}s; worker killed", raised=False)
        try:
            status, payload = conn.recv()
        except (EOFError, ConnectionResetError, OSError):
            raise self._lost(index, what) from None
        if status == "ok":
            return payload
        short, full = payload
        logger.warning("env %d: %s raised in its worker:\n%s", index, what, full)
        raise _WorkerFailed(f"{what} raised {short}", raised=True)

    def _lost(self, index: int, what: str) -> _WorkerFailed:
        """The worker's pipe is closed: wait for the process so its exit code can be reported."""
        process = self._workers[index].process
        process.join(timeout=self.close_timeout)
        if process.is_alive():
            self._kill(index)
        error = f"worker process died during {what} ({_describe_exit(process.exitcode)})"
        return _WorkerFailed(error, raised=False)

    def _kill(self, index: int) -> None:
        process = self._workers[index].process
        if process.is_alive():
            process.kill()
        process.join(timeout=self.close_timeout)

    def _crashed(self, index: int, error: str) -> EnvResult:
        """Log the crash, replace the worker with a fresh env, and flag the env for reset."""
        logger.warning("env %d crashed: %s; starting a replacement", index, error)
        self.crash_log.append((index, error))
        self._restart(index)
        return EnvResult.failure(error)

    def _restart(self, index: int) -> None:
        _shutdown([self._workers[index]], self.close_timeout)
        self._workers[index] = self._start_worker(index)
        self._needs_reset[index] = True


def _shutdown(workers: Sequence[_Worker], timeout: float) -> None:
    """Ask workers to close their env, then kill whatever has not exited by the deadline."""
    for worker in workers:
        if worker.process.is_alive():
            try:
                worker.conn.send(("close", None))
            except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
                pass
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
    for worker in workers:
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(timeout=timeout)
        worker.conn.close()


def make_vector_env(
    num_envs: int, env_fn_for_index: Callable[[int], gym.Env], **kwargs: Any
) -> SubprocVectorEnv:
    """Envs that differ only by index (task, init state, EGL device) without writing partials.

    `env_fn_for_index` must be a picklable module-level function; it is called as
    `env_fn_for_index(i)` inside worker i. `kwargs` go to `SubprocVectorEnv`.
    """
    env_fns = [functools.partial(env_fn_for_index, index) for index in range(num_envs)]
    return SubprocVectorEnv(env_fns, **kwargs)
