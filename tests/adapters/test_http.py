"""The HTTP adapter against real local servers: one hard limit whatever the receiver does."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hookpack.adapters.http import HttpError, mask_url, parse_url, post
from hookpack.errors import ConfigError

LOOP = ["127.0.0.1"]


class RawServer:
    """A TCP server whose answer the test scripts byte by byte (or never sends)."""

    def __init__(self, script, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.script = script
        self.tls = tls
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            self.requests.append(data)
            self.script(conn, self.stop)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def server():
    made = []

    def make(script, tls=None):
        made.append(RawServer(script, tls))
        return made[-1]
    yield make
    for s in made:
        s.close()


def ok(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


def test_2xx_answer(server):
    s = server(ok)
    response = post(f"http://127.0.0.1:{s.port}/x?y=1", b'{"a":1}',
                    {"Content-Type": "application/json"}, timeout=2, allow_insecure_hosts=LOOP)
    assert (response.status, response.body) == (200, b"ok")
    head, _, _ = s.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /x?y=1 HTTP/1.1\r\n")
    assert b"\r\nContent-Type: application/json" in head
    assert b"\r\nContent-Length: 7" in head


def test_error_status_raises_with_status_and_short_reason(server):
    s = server(lambda c, _: c.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 9\r\n\r\nbad thing"))
    with pytest.raises(HttpError) as err:
        post(f"http://127.0.0.1:{s.port}/secret/path", b"{}", {}, timeout=2,
             allow_insecure_hosts=LOOP)
    assert err.value.status == 500
    assert str(err.value) == f"http://127.0.0.1:{s.port}: HTTP 500 bad thing"


@pytest.mark.parametrize("behaviour", ["silent", "drip", "headers-then-silent"])
def test_a_hanging_or_dripping_receiver_never_exceeds_the_limit(server, behaviour):
    def script(conn, stop):
        if behaviour == "silent":
            stop.wait(10)
        elif behaviour == "drip":  # within every per-recv timeout, never finished
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(100):
                if stop.wait(0.05):
                    return
                conn.sendall(b"x")
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            stop.wait(10)
    s = server(script)
    start = time.monotonic()
    if behaviour != "silent":
        # The status line said 200: the receiver accepted the event; the rest of the
        # answer (which we never use) is cut at the limit instead of being waited for.
        response = post(f"http://127.0.0.1:{s.port}/", b"{}", {}, timeout=0.4,
                        allow_insecure_hosts=LOOP)
        assert response.status == 200 and len(response.body) < 1000
    else:
        with pytest.raises(HttpError, match="no answer within 0.4 s"):
            post(f"http://127.0.0.1:{s.port}/", b"{}", {}, timeout=0.4,
                 allow_insecure_hosts=LOOP)
    assert time.monotonic() - start < 0.4 + 0.5  # loose: shared machine


def test_refused_connection_fails_at_once():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(HttpError, match="cannot connect: connection refused"):
        post(f"http://127.0.0.1:{port}/", b"{}", {}, timeout=2, allow_insecure_hosts=LOOP)


def test_https_is_required_unless_the_host_is_allowed():
    with pytest.raises(ConfigError, match="plain http; use https or list '127.0.0.1'"):
        parse_url("http://127.0.0.1:1/services/T/B/token")
    assert parse_url("http://127.0.0.1:1/a", LOOP).port == 1
    with pytest.raises(ConfigError, match="carries credentials"):
        parse_url("https://user:pw@example.org/")
    with pytest.raises(ConfigError, match="not an http"):
        parse_url("ftp://example.org/")


def test_mask_url_never_shows_path_or_query():
    assert mask_url("https://hooks.slack.com/services/T0/B0/token") == \
        "https://hooks.slack.com/***"
    assert mask_url("https://g.example:3000/?token=x") == "https://g.example:3000/***"
    assert mask_url("https://g.example") == "https://g.example"


def test_header_injection_is_refused(server):
    s = server(ok)
    with pytest.raises(ConfigError, match="line break"):
        post(f"http://127.0.0.1:{s.port}/", b"{}", {"X-A": "b\r\nX-Evil: 1"}, timeout=1,
             allow_insecure_hosts=LOOP)


@pytest.fixture
def tls_cert(tmp_path) -> tuple[Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return key, cert


def test_https_with_a_ca_file_and_an_untrusted_certificate(server, tls_cert):
    key, cert = tls_cert
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    s = server(ok, tls=context)
    url = f"https://127.0.0.1:{s.port}/api/annotations"
    assert post(url, b"{}", {}, timeout=3, ca_file=str(cert)).status == 200
    with pytest.raises(HttpError, match="TLS certificate not trusted"):
        post(url, b"{}", {}, timeout=3)


def test_a_tls_handshake_that_never_completes_is_bounded(server):
    s = server(lambda c, stop: stop.wait(10))  # plain TCP: never answers the ClientHello
    start = time.monotonic()
    with pytest.raises(HttpError):
        post(f"https://127.0.0.1:{s.port}/", b"{}", {}, timeout=0.4)
    assert time.monotonic() - start < 0.4 + 0.5
