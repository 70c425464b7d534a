"""The HTTP adapter's hard limit over HTTPS, against a real local TLS server on loopback
whose certificate is signed by a CA made in the test: every fault shape ends within its
budget. (``ssl`` detaches the socket it wraps: a limit that shuts down the original
socket object wakes nothing, and the per-call timeouts, here 2 s beyond the limit, let
a trickling receiver stretch the exchange; both would fail these tests.)"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hookpack.adapters.http import HttpError, post

BUDGET = 0.5
SLACK = 0.7  # scheduling on a loaded machine; well below the 2 s per-call backstop


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A test CA and a server certificate for 127.0.0.1 signed by it."""
    d = tmp_path_factory.mktemp("pki")
    p = {n: d / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem", "ext")}
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "1", "-subj", "/CN=hookpack test CA", "-keyout", str(p["ca.key"]),
            "-out", str(p["ca.pem"]))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=127.0.0.1", "-keyout", str(p["srv.key"]), "-out", str(p["srv.csr"]))
    p["ext"].write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(p["srv.csr"]), "-CA", str(p["ca.pem"]), "-CAkey",
            str(p["ca.key"]), "-CAcreateserial", "-days", "1", "-extfile", str(p["ext"]),
            "-out", str(p["srv.pem"]))
    return p


class TlsServer:
    """Accepts TCP on loopback; completes TLS (unless ``tls`` is False), reads the
    request, then lets ``script`` answer (or not)."""

    def __init__(self, pki: dict[str, Path], script, tls: bool = True) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki["srv.pem"], pki["srv.key"])
        self.script, self.tls = script, tls
        self.stop = threading.Event()
        self.handshakes = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)
            if not self.tls:
                self.stop.wait(5)  # never answers the ClientHello
                return
            conn = self.context.wrap_socket(conn, server_side=True)
            self.handshakes += 1
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            self.script(conn, self.stop)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def serve(pki):
    made: list[TlsServer] = []

    def make(script, tls: bool = True) -> TlsServer:
        made.append(TlsServer(pki, script, tls))
        return made[-1]
    yield make
    for s in made:
        s.close()


def trickle(head: bytes):
    def script(conn, stop):
        conn.sendall(head)
        for _ in range(80):  # one byte at a time for 4 s, never the end of the headers
            if stop.wait(0.05):
                return
            conn.sendall(b"x")
    return script


def timed(url: str, pki) -> tuple[float, object]:
    start = time.monotonic()
    try:
        outcome: object = post(url, b"{}", {}, timeout=BUDGET, ca_file=str(pki["ca.pem"]))
    except HttpError as err:
        outcome = err
    return time.monotonic() - start, outcome


def test_a_prompt_answer_over_https_with_the_test_ca(serve, pki):
    s = serve(lambda c, _: c.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"))
    _, outcome = timed(f"https://127.0.0.1:{s.port}/hook", pki)
    assert getattr(outcome, "status", None) == 201 and s.handshakes == 1


@pytest.mark.parametrize("shape", ["silent", "trickle-status-line", "trickle-headers",
                                   "hang-after-status-line", "handshake-never-completes"])
def test_every_fault_shape_over_https_ends_within_its_budget(serve, pki, shape):
    scripts = {
        "silent": lambda c, stop: stop.wait(5),
        "trickle-status-line": trickle(b"HTTP/1.1 2"),
        "trickle-headers": trickle(b"HTTP/1.1 200 OK\r\nX-Slow: "),
        "hang-after-status-line": lambda c, stop: (c.sendall(b"HTTP/1.1 200 OK\r\n"),
                                                   stop.wait(5)),
        "handshake-never-completes": None,
    }
    s = serve(scripts[shape], tls=shape != "handshake-never-completes")
    seconds, outcome = timed(f"https://127.0.0.1:{s.port}/", pki)
    assert seconds < BUDGET + SLACK, f"{shape}: {seconds:.2f} s, {outcome!r}"
    if shape in ("trickle-headers", "hang-after-status-line"):
        # the status line said 200: accepted; the rest is cut at the limit
        assert getattr(outcome, "status", None) == 200, outcome
        assert seconds >= BUDGET * 0.9  # it was the limit that ended it
    else:
        assert isinstance(outcome, HttpError), outcome
        assert str(outcome).endswith(f"no answer within {BUDGET:g} s"), outcome
    if shape != "handshake-never-completes":
        assert s.handshakes == 1  # the fault came after a completed TLS handshake


def test_hanging_after_the_headers_returns_at_once(serve, pki):
    s = serve(lambda c, stop: (c.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 99\r\n"
                                         b"\r\npartial"), stop.wait(5)))
    _, outcome = timed(f"https://127.0.0.1:{s.port}/", pki)
    assert getattr(outcome, "status", None) == 202 and getattr(outcome, "body", b"") == \
        b"partial"


def test_connection_refused_over_https_fails_at_once(pki):
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    seconds, outcome = timed(f"https://127.0.0.1:{port}/", pki)
    assert isinstance(outcome, HttpError) and "connection refused" in str(outcome)
    assert seconds < BUDGET


def test_the_limit_holds_for_many_requests_in_a_row(serve, pki):
    """No descriptor leak or late shutdown of a reused descriptor across requests."""
    s = serve(lambda c, _: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    slow = serve(lambda c, stop: stop.wait(5))
    for _ in range(3):
        assert getattr(timed(f"https://127.0.0.1:{s.port}/", pki)[1], "status", 0) == 200
        assert isinstance(timed(f"https://127.0.0.1:{slow.port}/", pki)[1], HttpError)
