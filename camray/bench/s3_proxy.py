"""A fault-injecting HTTP proxy for an S3 endpoint: asyncio, on 127.0.0.1, stopping itself at a deadline.

Every request is forwarded to the real store (moto) unless its fault says otherwise. Faults are drawn per
request from a seeded generator:
- `slowdown`: answered here with `503 SlowDown` and S3's XML error body; the store never sees it.
- `reset`: the connection is cut in the middle of a body and reset (RST): a request that carries a body is
  cut after half of it (the store never sees it); otherwise the request is forwarded and the response is
  cut after half of its body, or, when it has none, dropped whole after the store acted on it.
- `delay`: held for `delay_seconds`, then forwarded.

Rates alone would leave the rarer faults unmet on a few dozen transfers in most draws (2% resets over 40
object reads: none in 45% of runs), and a test that never met its fault would pass without proving anything.
So the first object reads (GET without a query) and object writes (PUT with a body, not a copy) meet each
fault once, in a seeded order; every request after that takes its chance at the rates.

A listing can be failed midway: with `list_pages_failing_from=N`, every request for page N or a later one of a
ListObjectsV2 (a request that carries the continuation token of page N - 1 or of any later page) meets
`list_fault`, whatever its attempt, as a store that breaks down while a listing is paged through.

Keep-alive: many requests per client connection, bodies framed by Content-Length or chunked encoding, and
`Expect: 100-continue` answered here. Each request goes to the store on a fresh connection
(`Connection: close`), so the store's own keep-alive never interleaves with the faults.

The proxy serves from a child process of its own (`FaultyS3Proxy` starts it; `_ProxyServer` is the server): delta-rs
holds the GIL through some of its calls while it waits on the network, and a proxy thread in the same process could
then never answer them. What it injected is read back over its own endpoint (`/_camray_proxy/state`).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from urllib.parse import parse_qs, urlparse

from camray.bench.moto_process import stop_child

KINDS = ("slowdown", "reset", "delay")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te", "upgrade"}
SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>camray-faults</RequestId></Error>"
)
# How long the proxy waits on the store or a client for any one read; nothing it does can hang longer.
IO_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class FaultRates:
    slowdown: float = 0.10
    reset: float = 0.02
    delay: float = 0.05
    delay_seconds: float = 2.0


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name), None)

    @property
    def kind(self) -> str:
        """`object-read`, `object-write` or `other`: where the forced faults go. The run's own bookkeeping
        objects (the lease, the listing, `run.json`: names under `_`, none of them Parquet results) are `other`,
        so that the forced faults land on image reads and staged result files."""
        control = "/_lease" in self.target or "/_listing/" in self.target
        if self.method == "GET" and "?" not in self.target and not control and "/_" not in self.target:
            return "object-read"
        if (
            self.method == "PUT"
            and self.header("x-amz-copy-source") is None
            and _content_length(self) > 0
            and self.target.split("?", 1)[0].endswith(".parquet")
            and not control
        ):
            return "object-write"
        return "other"


def _content_length(message: _Request) -> int:
    value = message.header("content-length")
    return int(value) if value else 0


CONTROL = "/_camray_proxy/"


def _checked(upstream: str, list_pages_failing_from: int | None, list_fault: str) -> tuple[str, int]:
    """The upstream's (host, port), once the settings are checked."""
    parsed = urlparse(upstream)
    if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
        raise ValueError(f"`upstream` must be http://HOST:PORT, got {upstream!r}")
    if list_pages_failing_from is not None and list_pages_failing_from < 2:
        raise ValueError("`list_pages_failing_from` must be 2 or more: the first page carries no token")
    if list_fault not in ("slowdown", "reset"):
        raise ValueError(f"`list_fault` must be `slowdown` or `reset`, got {list_fault!r}")
    return parsed.hostname, parsed.port


class _ProxyServer:
    """The proxy itself, in the process that runs it: `counts`, `forced` and `log` as `FaultyS3Proxy` says."""

    def __init__(
        self,
        upstream: str,
        *,
        seed: int,
        rates: FaultRates | None = None,
        deadline_s: float = 300.0,
        force_each: bool = True,
        list_pages_failing_from: int | None = None,
        list_fault: str = "slowdown",
    ) -> None:
        self.upstream = _checked(upstream, list_pages_failing_from, list_fault)
        self.list_pages_failing_from = list_pages_failing_from
        self.list_fault = list_fault
        # Continuation tokens in the order first seen: the one of page n is the (n - 1)th.
        self._list_tokens: list[str] = []
        self.rates = rates or FaultRates()
        self.deadline_s = deadline_s
        self.counts: Counter[tuple[str, str]] = Counter()
        self.forced: Counter[tuple[str, str]] = Counter()
        self.log: list[tuple[str, str, str]] = []
        self._random = random.Random(seed)
        forced = ("object-read", "object-write") if force_each else ()
        self._pending = {kind: self._random.sample(KINDS, len(KINDS)) for kind in forced}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faulty-s3-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.endpoint = ""

    def start(self) -> str:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self.endpoint

    def stop(self) -> None:
        """Stops listening and resets every open connection: the store is gone from here on."""
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def state(self) -> bytes:
        """What was injected so far, as the JSON `FaultyS3Proxy` reads."""
        with self._lock:
            return json.dumps(
                {
                    "log": self.log,
                    "counts": [[*key, n] for key, n in self.counts.items()],
                    "forced": [[*key, n] for key, n in self.forced.items()],
                }
            ).encode()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        # Bounded in time: a test that forgets to stop it, or hangs, does not leave it running.
        self._loop.call_later(self.deadline_s, lambda: asyncio.ensure_future(self._close()))

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            _reset(writer)
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _failed_list_page(self, request: _Request) -> bool:
        """Whether `request` asks for a listing page that fails (`list_pages_failing_from`). Under the lock."""
        if self.list_pages_failing_from is None or request.method != "GET":
            return False
        query = parse_qs(urlparse(request.target).query)
        token = query.get("continuation-token", [None])[0]
        if query.get("list-type") != ["2"] or token is None:
            return False
        if token not in self._list_tokens:
            self._list_tokens.append(token)
        return self._list_tokens.index(token) + 2 >= self.list_pages_failing_from

    def _decide(self, request: _Request) -> str:
        with self._lock:
            pending = self._pending.get(request.kind)
            if self._failed_list_page(request):
                fault = self.list_fault
            elif pending:
                fault = pending.pop()
                self.forced[(request.kind, fault)] += 1
            else:
                draw = self._random.random()
                rates = self.rates
                fault = (
                    "slowdown"
                    if draw < rates.slowdown
                    else "reset"
                    if draw < rates.slowdown + rates.reset
                    else "delay"
                    if draw < rates.slowdown + rates.reset + rates.delay
                    else "ok"
                )
            self.counts[(request.method, fault)] += 1
            self.log.append((request.method, request.target, fault))
            return fault

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    # No timeout between requests: closing an idle kept-alive connection would race the client's
                    # next request on it and fail it without a fault. The deadline bounds the wait.
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return  # the client closed its kept-alive connection
                request = _parse_request(head)
                if request.target.startswith(CONTROL):
                    await self._control(request, reader, writer)
                    continue
                fault = self._decide(request)
                if (request.header("expect") or "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                length = _content_length(request)
                if fault == "reset" and length > 1:
                    await asyncio.wait_for(reader.readexactly(length // 2), IO_TIMEOUT_S)
                    _reset(writer)
                    return
                body = await _read_body(reader, request)
                if fault == "slowdown":
                    writer.write(_slowdown_response(request.method == "HEAD"))
                    await writer.drain()
                    continue
                if fault == "delay":
                    await asyncio.sleep(self.rates.delay_seconds)
                status_line, headers, response_body = await self._forward(request, body)
                has_body = _response_has_body(request.method, status_line)
                if fault == "reset":
                    if has_body and len(response_body) > 1:
                        writer.write(_response_head(status_line, headers, len(response_body), has_body))
                        writer.write(response_body[: len(response_body) // 2])
                        await writer.drain()
                    _reset(writer)
                    return
                writer.write(_response_head(status_line, headers, len(response_body), has_body) + response_body)
                await writer.drain()
                if (request.header("connection") or "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, asyncio.CancelledError):
            return  # the client went away, or the proxy is stopping
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def _control(self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """`GET .../state`: what was injected; `POST .../clear`: the log emptied. Neither is logged nor faulted."""
        await _read_body(reader, request)
        if request.target == CONTROL + "clear":
            with self._lock:
                self.log.clear()
            body = b"{}"
        else:
            body = self.state()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()

    async def _forward(self, request: _Request, body: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream), IO_TIMEOUT_S)
        try:
            headers = [(k, v) for k, v in request.headers if k.lower() not in HOP_BY_HOP | {"content-length"}]
            lines = [f"{request.method} {request.target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
            if body or request.method in ("PUT", "POST"):
                lines.append(f"Content-Length: {len(body)}")
            lines.append("Connection: close")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT_S)
            status_line, response_headers = _parse_head(head)
            if not _response_has_body(request.method, status_line):
                return status_line, response_headers, b""
            message = _Request("", "", "", response_headers)
            if message.header("content-length") is None and message.header("transfer-encoding") is None:
                return status_line, response_headers, await asyncio.wait_for(reader.read(), IO_TIMEOUT_S)
            return status_line, response_headers, await _read_body(reader, message)
        finally:
            writer.close()


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers.append((key.strip(), value.strip()))
    return lines[0], headers


def _parse_request(head: bytes) -> _Request:
    start, headers = _parse_head(head)
    method, target, version = start.split(" ", 2)
    return _Request(method, target, version, headers)


async def _read_body(reader: asyncio.StreamReader, message: _Request) -> bytes:
    if "chunked" in (message.header("transfer-encoding") or "").lower():
        chunks = []
        while True:
            size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), IO_TIMEOUT_S)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await asyncio.wait_for(reader.readuntil(b"\r\n"), IO_TIMEOUT_S)) != b"\r\n":
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(await asyncio.wait_for(reader.readexactly(size), IO_TIMEOUT_S))
            await reader.readexactly(2)
    length = _content_length(message)
    return await asyncio.wait_for(reader.readexactly(length), IO_TIMEOUT_S) if length else b""


def _response_has_body(method: str, status_line: str) -> bool:
    status = int(status_line.split(" ", 2)[1])
    return method != "HEAD" and status >= 200 and status not in (204, 304)


def _response_head(status_line: str, headers: list[tuple[str, str]], length: int, has_body: bool) -> bytes:
    # A HEAD response keeps the store's Content-Length (the object's size) with no body after it.
    kept = [
        (k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and (not has_body or k.lower() != "content-length")
    ]
    if has_body:
        kept.append(("Content-Length", str(length)))
    lines = [status_line.replace("HTTP/1.0", "HTTP/1.1", 1), *(f"{k}: {v}" for k, v in kept)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _slowdown_response(head_only: bool) -> bytes:
    headers = [
        "HTTP/1.1 503 Slow Down",
        "Content-Type: application/xml",
        f"Content-Length: {0 if head_only else len(SLOWDOWN_BODY)}",
        "x-amz-request-id: camray-faults",
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}",
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + (b"" if head_only else SLOWDOWN_BODY)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Closes with RST, not FIN: the peer sees `connection reset` mid-stream, as when a load balancer dies."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already closed
    writer.transport.abort()


class _Log(list):
    """The proxy's log as read at one moment; `clear()` empties the proxy's own too."""

    def __init__(self, entries: list[tuple[str, str, str]], proxy: FaultyS3Proxy) -> None:
        super().__init__(entries)
        self._proxy = proxy

    def clear(self) -> None:
        self._proxy._request("POST", "clear")
        super().clear()


class FaultyS3Proxy:
    """`with FaultyS3Proxy(upstream, seed=...) as proxy:` the proxy on `proxy.endpoint`, in a child process, until the
    block ends (or `deadline_s`). `counts[(method, fault)]` says what was injected: `fault` is one of `KINDS` or `ok`;
    `forced[(request kind, fault)]` counts the faults forced on object reads and writes (the module's docstring);
    `log` holds every request as (method, target, fault), in order. Each is read from the proxy when asked."""

    def __init__(
        self,
        upstream: str,
        *,
        seed: int,
        rates: FaultRates | None = None,
        deadline_s: float = 300.0,
        force_each: bool = True,
        list_pages_failing_from: int | None = None,
        list_fault: str = "slowdown",
    ) -> None:
        _checked(upstream, list_pages_failing_from, list_fault)  # here, where the caller sees the error
        self._arguments = {
            "upstream": upstream,
            "seed": seed,
            "rates": asdict(rates or FaultRates()),
            "deadline_s": deadline_s,
            "force_each": force_each,
            "list_pages_failing_from": list_pages_failing_from,
            "list_fault": list_fault,
        }
        self._process: subprocess.Popen | None = None
        self.endpoint = ""

    def __enter__(self) -> FaultyS3Proxy:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> str:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "camray.bench.s3_proxy", json.dumps(self._arguments)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self._process.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the fault proxy did not start: {line!r}")
        self.endpoint = line
        self._last: dict | None = None
        return self.endpoint

    def stop(self) -> None:
        """Reads what was injected one last time, then stops the proxy: the store is gone from here on."""
        if self._process is None or self._process.poll() is not None:
            return
        try:
            self._last = self._state()
        except OSError:
            pass
        stop_child(self._process)

    def _request(self, method: str, what: str) -> bytes:
        import urllib.request

        request = urllib.request.Request(
            self.endpoint + CONTROL + what, method=method, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(request, timeout=IO_TIMEOUT_S) as response:
            return response.read()

    def _state(self) -> dict:
        if self._process is not None and self._process.poll() is None:
            return json.loads(self._request("GET", "state"))
        return self._last or {"log": [], "counts": [], "forced": []}

    @property
    def log(self) -> _Log:
        return _Log([tuple(entry) for entry in self._state()["log"]], self)

    @property
    def counts(self) -> Counter[tuple[str, str]]:
        return Counter({(method, fault): n for method, fault, n in self._state()["counts"]})

    @property
    def forced(self) -> Counter[tuple[str, str]]:
        return Counter({(kind, fault): n for kind, fault, n in self._state()["forced"]})

    def injected(self, method: str | None = None) -> Counter[str]:
        """Faults injected so far, by kind, for one HTTP method or all."""
        injected: Counter[str] = Counter()
        for (m, fault), n in self.counts.items():
            if fault != "ok" and method in (None, m):
                injected[fault] += n
        return injected


def _serve_from_this_process(arguments: dict) -> None:
    """The child's side: serves until terminated or past its deadline, its endpoint the first line it prints."""
    arguments = dict(arguments, rates=FaultRates(**arguments["rates"]))
    server = _ProxyServer(**arguments)
    print(server.start(), flush=True)
    time.sleep(arguments["deadline_s"])
    server.stop()


if __name__ == "__main__":
    _serve_from_this_process(json.loads(sys.argv[1]))
