"""HTTP POST with one hard wall-clock limit covering DNS, connect, TLS, send and read.

Python's own timeouts are per operation: `socket.getaddrinfo` has none at all, and a
receiver that trickles one byte per second keeps `http.client` reading for ever
within its per-recv timeout. A hook holds Ganeti's job locks while it waits, so here
the name is resolved in a helper thread that is abandoned at the limit, and a timer
shuts the socket down at the limit, which wakes any blocked connect, send or recv at
once. The timer holds its own duplicate of the socket's descriptor: `ssl` wraps a
socket by detaching it (the original object's descriptor becomes -1, so shutting
that down does nothing), and shutdown(2) acts on the connection, whichever
descriptor names it, so the duplicate ends the TLS handshake and the TLS reads too.
Only the standard library, imported when a request is made (hot path).

HTTPS is required unless the host is explicitly listed as allowed for plain HTTP
(tests use loopback). Error messages name the host only, never the path or query
(Slack webhook URLs carry their token in the path).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from hookpack.errors import ConfigError, HookpackError
from hookpack.record import record

MAX_RESPONSE = 64 * 1024
# Per-call socket timeout beyond the limit: only a backstop, the killer ends calls first.
BACKSTOP = 2.0


class HttpError(HookpackError):
    """A request did not get a 2xx answer in time; the message names the host only.
    ``retry_after``: the answer's Retry-After, in seconds from now, when it had one."""

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)

    @property
    def permanent(self) -> bool:
        """A 4xx other than 408 (timeout), 425 (too early) and 429 (too many requests):
        the receiver refuses this request as it is, and will again."""
        return self.status is not None and 400 <= self.status < 500 \
            and self.status not in (408, 425, 429)


@record(frozen=True)
class Response:
    status: int
    body: bytes
    seconds: float


@record(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # path + query, sent as the request target

    @property
    def masked(self) -> str:
        return mask_url(f"{self.scheme}://{self.host}:{self.port}")


def mask_url(url: str) -> str:
    """``scheme://host[:port]/***``: what may be shown of a URL in logs and listings."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    tail = "/***" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme or '?'}://{host}{port}{tail}"


def parse_url(url: str, allow_insecure_hosts: Sequence[str] = ()) -> Target:
    """Split and check ``url``: https, or http to a host listed in ``allow_insecure_hosts``."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ConfigError(f"URL {mask_url(url)} is not valid") from None
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigError(f"URL {mask_url(url)} is not an http(s) URL")
    if parts.username or parts.password:
        raise ConfigError(f"URL {mask_url(url)} carries credentials; use a token file")
    if parts.scheme == "http" and host.lower() not in {h.lower() for h in allow_insecure_hosts}:
        raise ConfigError(
            f"URL {mask_url(url)} is plain http; use https or list {host!r} in "
            "allow_insecure_hosts")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return Target(parts.scheme, host, port or (443 if parts.scheme == "https" else 80), target)


def post(url: str, body: bytes, headers: Mapping[str, str], *, timeout: float,
         allow_insecure_hosts: Sequence[str] = (), ca_file: str = "") -> Response:
    """POST ``body`` to ``url``; return a 2xx response or raise HttpError / ConfigError.

    Never takes longer than ``timeout`` seconds (plus scheduling noise) whatever the
    resolver or the receiver does.
    """
    target = parse_url(url, allow_insecure_hosts)
    start = time.monotonic()
    give_up = start + max(0.0, timeout)
    where = target.masked
    addresses = _resolve(target, give_up)
    sock = _connect(target, addresses, give_up)
    killer = _Killer(sock, give_up)
    try:
        if target.scheme == "https":
            sock = _wrap_tls(sock, target, ca_file, give_up)
        # The killer timer, not the socket timeout, ends a late exchange: it fires first
        # and turns every blocked call into an EOF/error at the same moment.
        sock.settimeout(max(0.001, give_up - time.monotonic()) + BACKSTOP)
        sock.sendall(_request(target, body, headers))
        status, reply, retry_after = _read_response(sock)
    except HttpError:
        raise
    except (OSError, ValueError) as err:
        if time.monotonic() >= give_up - 0.005:
            raise HttpError(f"{where}: no answer within {timeout:g} s") from None
        raise HttpError(f"{where}: {_describe(err)}") from None
    finally:
        killer.cancel()
        sock.close()
    seconds = time.monotonic() - start
    if not 200 <= status < 300:
        raise HttpError(f"{where}: HTTP {status} {_snippet(reply)}".rstrip(), status=status,
                        retry_after=retry_after)
    return Response(status, reply, seconds)


def _resolve(target: Target, give_up: float) -> list[tuple]:  # type: ignore[type-arg]
    try:  # a literal address needs no resolver (and no thread)
        return socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM,
                                  flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["value"] = socket.getaddrinfo(target.host, target.port,
                                              type=socket.SOCK_STREAM)
        except OSError as err:
            box["error"] = err

    thread = threading.Thread(target=work, name="hookpack-dns", daemon=True)
    thread.start()
    thread.join(max(0.0, give_up - time.monotonic()))
    if "value" in box:
        return box["value"]  # type: ignore[return-value]
    if "error" in box:
        raise HttpError(f"{target.masked}: cannot resolve {target.host}: "
                        f"{_describe(box['error'])}")  # type: ignore[arg-type]
    raise HttpError(f"{target.masked}: resolving {target.host} took too long")


def _connect(target: Target, addresses: list[tuple], give_up: float) -> socket.socket:  # type: ignore[type-arg]
    last: OSError | None = None
    for family, kind, proto, _, address in addresses:
        left = give_up - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        sock.settimeout(left)
        try:
            sock.connect(address)
            return sock
        except OSError as err:
            sock.close()
            last = err
    if last is None or time.monotonic() >= give_up:
        raise HttpError(f"{target.masked}: connect timed out")
    raise HttpError(f"{target.masked}: cannot connect: {_describe(last)}")


def _wrap_tls(sock: socket.socket, target: Target, ca_file: str,
              give_up: float) -> socket.socket:
    import ssl

    context = ssl.create_default_context(cafile=ca_file or None)
    sock.settimeout(max(0.001, give_up - time.monotonic()) + BACKSTOP)  # killer first
    try:
        return context.wrap_socket(sock, server_hostname=target.host)
    except ssl.SSLCertVerificationError as err:
        sock.close()
        raise HttpError(f"{target.masked}: TLS certificate not trusted: "
                        f"{err.verify_message}") from None


class _Killer:
    """Shuts the connection down at ``give_up``, through its own duplicate descriptor
    (which TLS wrapping does not detach); ``cancel`` stops it and closes the duplicate."""

    def __init__(self, sock: socket.socket, give_up: float) -> None:
        self._lock = threading.Lock()
        self._dup: socket.socket | None = sock.dup()
        self._timer = threading.Timer(max(0.0, give_up - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._dup is not None:
                # Already closed by the peer: then nothing is blocked on it.
                with contextlib.suppress(OSError):
                    self._dup.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:  # never shut down a descriptor number reused meanwhile
            if self._dup is not None:
                self._dup.close()
                self._dup = None


def _request(target: Target, body: bytes, headers: Mapping[str, str]) -> bytes:
    host = target.host if ":" not in target.host else f"[{target.host}]"
    default_port = 443 if target.scheme == "https" else 80
    if target.port != default_port:
        host = f"{host}:{target.port}"
    lines = [f"POST {target.path} HTTP/1.1", f"Host: {host}",
             f"Content-Length: {len(body)}", "Connection: close",
             "User-Agent: hookpack"]
    for name, value in headers.items():
        if any(c in f"{name}{value}" for c in "\r\n\0"):
            raise ConfigError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _read_response(sock: socket.socket) -> tuple[int, bytes, float | None]:
    """Status, the start of the body and Retry-After (s) of an HTTP/1.x answer.

    Only the status line decides (a 2xx means the receiver took the event); the headers
    and whatever body has arrived with them are read up to MAX_RESPONSE, for the error
    message. Parsed by hand: http.client (with email and ssl) costs ~20 ms to import
    on every hook run, for a status code.
    """
    data = b""
    while b"\r\n\r\n" not in data and len(data) < MAX_RESPONSE:
        try:
            chunk = sock.recv(4096)
        except OSError:
            if b"\r\n" in data:  # the status line is in; the rest was cut at the limit
                break
            raise
        if not chunk:
            break
        data += chunk
    line, _, rest = data.partition(b"\r\n")
    parts = line.split(None, 2)
    if (b"\r\n" not in data or len(parts) < 2
            or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit()
            or len(parts[1]) != 3):
        if not data:
            raise ConnectionResetError(0, "connection closed without an answer")
        raise ValueError(f"not an HTTP answer: {line[:40]!r}")
    head, _, body = rest.partition(b"\r\n\r\n")
    return int(parts[1]), body, retry_after(head)


def retry_after(head: bytes, now: float | None = None) -> float | None:
    """Seconds from the Retry-After header (RFC 9110 10.2.3: delay-seconds or an
    HTTP-date) among the header lines ``head``; None without a usable one."""
    for line in head.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep or name.strip().lower() != b"retry-after":
            continue
        text = value.strip().decode("latin-1")
        if text.isdigit():
            return float(text)
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(text).timestamp()
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when - (time.time() if now is None else now))
    return None


def _describe(err: BaseException) -> str:
    if isinstance(err, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return f"{type(err).__name__}: {err}"[:120]


def _snippet(body: bytes) -> str:
    text = body[:80].decode("utf-8", "replace")
    return " ".join(text.split())
