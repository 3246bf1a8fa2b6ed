"""The client against a real local HTTP(S) server: how every kind of answer is classified."""

import datetime
import hashlib
import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.client import (
    Client,
    Gap,
    PayloadTooLarge,
    PinMismatch,
    ProtocolTooOld,
    Refused,
    RetryableError,
    StaleAttempt,
    Unauthorized,
)


class Canned:
    """Answers each POST with the next canned (status, headers, body) and records requests."""

    def __init__(self, tls_context=None):
        self.answers = []
        self.requests = []
        canned = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                canned.requests.append((self.path, dict(self.headers), json.loads(body or b"{}")))
                status, headers, payload = canned.answers.pop(0)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls_context is not None:
            self.httpd.socket = tls_context.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls_context else "http"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    def json(self, status, body, **headers):
        self.answers.append(
            (status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode())
        )

    def raw(self, status, payload=b"", **headers):
        self.answers.append((status, headers, payload))

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def canned():
    server = Canned()
    yield server
    server.close()


def client_for(server, **kwargs):
    client = Client(server.url, agent_token="rma_secret-token", poll_wait_seconds=1, **kwargs)
    return client


HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body>squid</body></html>"


def test_success_bodies_and_204(canned):
    client = client_for(canned)
    canned.json(200, {"host_id": 7, "settings": {}, "reconcile": []})
    canned.raw(204)
    assert client.hello({"hostname": "h"}, "boot", [])["host_id"] == 7
    assert client.poll("boot", [{"command_id": "c1", "result": "accepted"}], []) is None
    path, headers, body = canned.requests[0]
    assert path == "/api/agent/v1/hello"
    assert headers["Authorization"] == "Bearer rma_secret-token"
    assert body["protocol_version"] == 1 and body["boot_id"] == "boot"
    assert canned.requests[1][2] == {
        "boot_id": "boot",
        "acks": [{"command_id": "c1", "result": "accepted"}],
        "running": [],
    }
    client.close()


def test_proxy_html_pages_are_retryable_whatever_the_status(canned):
    client = client_for(canned)
    canned.raw(502, HTML_502, **{"Content-Type": "text/html"})
    with pytest.raises(RetryableError) as error:
        client.poll("b", [], [])
    assert error.value.status == 502
    canned.raw(200, HTML_502, **{"Content-Type": "text/html"})  # a captive portal says 200
    with pytest.raises(RetryableError, match="not the server's JSON"):
        client.poll("b", [], [])
    canned.raw(403, HTML_502, **{"Content-Type": "text/html"})
    with pytest.raises(RetryableError):
        client.send_events([])
    canned.raw(200, b"{not json", **{"Content-Type": "application/json"})
    with pytest.raises(RetryableError):
        client.send_events([])


def test_429_503_and_408_are_retryable_with_retry_after(canned):
    client = client_for(canned)
    canned.json(429, {"error": "slow_down", "message": "too many"}, **{"Retry-After": "17"})
    with pytest.raises(RetryableError) as error:
        client.poll("b", [], [])
    assert (error.value.status, error.value.retry_after) == (429, 17)
    canned.raw(503, b"", **{"Retry-After": "3"})
    with pytest.raises(RetryableError) as error:
        client.poll("b", [], [])
    assert error.value.retry_after == 3
    canned.json(408, {"error": "timeout"})
    with pytest.raises(RetryableError):
        client.poll("b", [], [])


def test_426_is_protocol_too_old_with_the_servers_message(canned):
    client = client_for(canned)
    canned.json(
        426,
        {"error": "protocol_too_old", "min_protocol": 2, "message": "Upgrade the agent to 0.2."},
    )
    with pytest.raises(ProtocolTooOld) as error:
        client.hello({}, "b", [])
    assert error.value.min_protocol == 2
    assert error.value.message == "Upgrade the agent to 0.2."


def test_401_is_unauthorized_and_other_refusals_keep_code_and_message(canned):
    client = client_for(canned)
    canned.json(401, {"error": "unauthenticated", "message": "unknown token"})
    with pytest.raises(Unauthorized):
        client.poll("b", [], [])
    canned.json(409, {"error": "token_used", "message": "This enrollment token was already used"})
    with pytest.raises(Refused) as error:
        client.enroll("rme_x", {"hostname": "h"})
    assert (error.value.status, error.value.code) == (409, "token_used")
    assert "already used" in str(error.value)
    assert "Authorization" not in canned.requests[-1][1]
    assert canned.requests[-1][2]["token"] == "rme_x"


def test_log_answers_gap_stale_and_too_large(canned):
    client = client_for(canned)
    canned.json(416, {"error": "log_gap", "committed_seq": 100})
    with pytest.raises(Gap) as error:
        client.send_logs(12, "att", 150, [])
    assert error.value.committed_seq == 100
    assert canned.requests[-1][0] == "/api/agent/v1/jobs/12/logs"
    canned.json(409, {"error": "stale_attempt"})
    with pytest.raises(StaleAttempt):
        client.send_logs(12, "att", 1, [])
    canned.json(413, {"error": "too_large"})
    with pytest.raises(PayloadTooLarge):
        client.send_logs(12, "att", 1, [])


def test_connection_refused_is_retryable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}", agent_token="rma_x")
    with pytest.raises(RetryableError, match="cannot reach"):
        client.poll("b", [], [])


def test_proxy_from_environment_is_used(canned, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", canned.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    canned.raw(204)
    client = Client("http://rm.invalid", agent_token="rma_x")
    assert client.poll("b", [], []) is None
    # A forward proxy receives the absolute URL.
    assert canned.requests[-1][0] == "http://rm.invalid/api/agent/v1/poll"


def make_certificate(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pin = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    return cert_file, key_file, pin


@pytest.fixture
def tls_server(tmp_path):
    cert_file, key_file, pin = make_certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server = Canned(tls_context=context)
    server.cert_file, server.pin = cert_file, pin
    yield server
    server.close()


def test_tls_with_custom_ca_bundle(tls_server):
    tls_server.raw(204)
    client = Client(tls_server.url, agent_token="rma_x", ca_file=str(tls_server.cert_file))
    assert client.poll("b", [], []) is None
    client.close()
    untrusted = Client(tls_server.url, agent_token="rma_x")  # system CAs do not know it
    with pytest.raises(RetryableError, match="TLS"):
        untrusted.poll("b", [], [])
    untrusted.close()


def test_certificate_pin_accepts_the_pinned_certificate_alone(tls_server):
    tls_server.raw(204)
    tls_server.raw(204)
    pinned = Client(tls_server.url, agent_token="rma_x", pin_sha256=tls_server.pin)
    assert pinned.poll("b", [], []) is None
    both = Client(
        tls_server.url,
        agent_token="rma_x",
        pin_sha256=tls_server.pin,
        ca_file=str(tls_server.cert_file),
    )
    assert both.poll("b", [], []) is None
    pinned.close()
    both.close()


def test_certificate_pin_mismatch_fails_closed(tls_server):
    wrong = "00" * 32
    client = Client(
        tls_server.url, agent_token="rma_x", pin_sha256=wrong, ca_file=str(tls_server.cert_file)
    )
    with pytest.raises(PinMismatch, match="does not match pin_sha256"):
        client.poll("b", [], [])
    assert tls_server.requests == []  # nothing was sent
    client.close()
