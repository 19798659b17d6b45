#!/usr/bin/env python3
"""An operator's HTTPS client (Python's ssl module, that is OpenSSL) against
the admin endpoint with [admin.tls], for tests/admin_tls.rs.

    admin_https.py PORT CA_PEM USER PASSWORD TOTP_CODE

Checks the server's certificate against CA_PEM and the name "localhost",
then:

1. POST /api/login with the password and code: the status and Set-Cookie;
2. GET /api/session with that cookie: the status and body;
3. with one TLS connection established (handshake done, no request yet),
   a plain-HTTP request on a second connection to the same port: every
   byte that came back before the server closed it (or that it timed out);
   then GET /health on the first connection: its status line.

Prints one JSON object with what it saw; the Rust test judges it.
"""

import http.client
import json
import socket
import ssl
import sys

TIMEOUT_S = 10


def context(ca):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def https(port, ctx, method, path, body=None, cookie=None):
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=TIMEOUT_S)
    headers = {"Host": "localhost"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if cookie:
        headers["Cookie"] = cookie
    # The switch listens on 127.0.0.1; the certificate is checked against
    # "localhost" (which may resolve to ::1 first).
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    conn.sock = ctx.wrap_socket(sock, server_hostname="localhost")
    tls_version = conn.sock.version()
    alpn = conn.sock.selected_alpn_protocol()
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    out = {
        "status": r.status,
        "set_cookie": r.getheader("Set-Cookie"),
        "body": r.read().decode("utf-8", "replace"),
        "tls_version": tls_version,
        "alpn": alpn,
    }
    conn.close()
    return out


def main():
    port = int(sys.argv[1])
    ca, user, password, code = sys.argv[2:6]
    ctx = context(ca)
    ctx.set_alpn_protocols(["http/1.1"])
    result = {}

    login = https(
        port,
        ctx,
        "POST",
        "/api/login",
        body=json.dumps({"user": user, "password": password, "code": code}),
    )
    result["login"] = login
    cookie = (login["set_cookie"] or "").split(";")[0]
    result["session"] = https(port, ctx, "GET", "/api/session", cookie=cookie)

    # One established TLS connection...
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    established = ctx.wrap_socket(raw, server_hostname="localhost")
    # ... and plain HTTP beside it.
    plain = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    plain.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    got = b""
    closed = False
    try:
        while True:
            chunk = plain.recv(4096)
            if not chunk:
                closed = True
                break
            got += chunk
    except ConnectionResetError:
        closed = True
    except socket.timeout:
        closed = False
    plain.close()
    result["plain"] = {"reply_hex": got.hex(), "closed": closed}

    established.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    answer = b""
    while True:
        chunk = established.recv(4096)
        if not chunk:
            break
        answer += chunk
    established.close()
    result["established_after_plain"] = answer.split(b"\r\n", 1)[0].decode("latin-1")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
