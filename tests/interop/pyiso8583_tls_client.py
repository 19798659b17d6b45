"""TLS interoperability: an independent TLS stack (Python's ssl, OpenSSL)
and an independent codec (pyiso8583) against `switchyard sim --tls
--client-ca`, which is rustls and our codec.

With --switchyard BIN it does everything itself: `BIN certs --dir TMP`
writes a private CA, a server certificate and a client certificate (CN
TERM0001); `BIN sim --tls ... --listen 127.0.0.1:0` is started and its
address read from its first line; then, over TLS 1.3 and again over TLS
1.2, each with the client certificate:

* 0800 (DE70 301) -> 0810, DE39 00, DE11 echoed;
* 0200 -> 0210, DE39 00, DE2/4/11/37/41 echoed, a six-character DE38.

And a client without a certificate must be refused: the handshake fails
or the connection ends before any answer.

Usage: python pyiso8583_tls_client.py --switchyard target/debug/switchyard
Prints one line per answer; exits 1 on the first check that fails.
"""

import argparse
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile

import iso8583
from iso8583.specs import default_ascii as spec

TIMEOUT = 10


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the simulator closed the connection")
        data += chunk
    return data


def exchange(sock, doc):
    raw, _ = iso8583.encode(doc, spec)
    sock.sendall(struct.pack(">H", len(raw)) + raw)
    (length,) = struct.unpack(">H", recv_exact(sock, 2))
    answer, _ = iso8583.decode(recv_exact(sock, length), spec)
    return answer


def context(files, version, with_cert=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(files["ca"])
    ctx.minimum_version = version
    ctx.maximum_version = version
    if with_cert:
        ctx.load_cert_chain(files["client cert (CN TERM0001)"], files["client key"])
    return ctx


def check_session(addr, files, version):
    ctx = context(files, version)
    with socket.create_connection(addr, timeout=TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            got = sock.version()
            want = {ssl.TLSVersion.TLSv1_3: "TLSv1.3", ssl.TLSVersion.TLSv1_2: "TLSv1.2"}[version]
            if got != want:
                fail(f"negotiated {got}, wanted {want}")
            echo = exchange(sock, {"t": "0800", "7": "1201101010", "11": "271828", "70": "301"})
            print(f"{got} {echo['t']} 39={echo.get('39')} 11={echo.get('11')}")
            if (echo["t"], echo.get("39"), echo.get("11")) != ("0810", "00", "271828"):
                fail(f"0800 answered {echo}")
            request = {
                "t": "0200",
                "2": "4761739001010010",
                "3": "000000",
                "4": "000000001500",
                "7": "1201101010",
                "11": "314159",
                "18": "5411",
                "37": "000000314159",
                "41": "TERM0001",
                "42": "PYMERCHANT00001",
                "49": "840",
            }
            answer = exchange(sock, request)
            print(f"{got} {answer['t']} 39={answer.get('39')} 11={answer.get('11')}")
            if answer["t"] != "0210" or answer.get("39") != "00":
                fail(f"0200 answered {answer}")
            for field in ("2", "4", "11", "37", "41"):
                if answer.get(field) != request[field]:
                    fail(f"DE{field} of the 0210 is {answer.get(field)!r}, sent {request[field]!r}")
            if len(answer.get("38", "")) != 6:
                fail(f"DE38 of the 0210 is {answer.get('38')!r}")


def check_refused_without_certificate(addr, files):
    ctx = context(files, ssl.TLSVersion.TLSv1_3, with_cert=False)
    try:
        with socket.create_connection(addr, timeout=TIMEOUT) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
                # TLS 1.3: the server checks the client's certificate
                # after the client's side of the handshake has ended, so
                # the refusal comes at the first read.
                exchange(sock, {"t": "0800", "7": "1201101010", "11": "000001", "70": "301"})
    except (ssl.SSLError, ConnectionError, OSError) as e:
        print(f"without a client certificate: refused ({type(e).__name__}: {e})")
        return
    fail("a client without a certificate was answered")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--switchyard", required=True, help="the switchyard binary")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        made = subprocess.run(
            [args.switchyard, "certs", "--dir", tmp],
            capture_output=True, text=True, timeout=60,
        )
        if made.returncode != 0:
            fail(f"switchyard certs: {made.stderr}")
        # "what: path" per line.
        files = dict(line.split(": ", 1) for line in made.stdout.splitlines())
        sim = subprocess.Popen(
            [args.switchyard, "sim", "--listen", "127.0.0.1:0", "--tls",
             "--cert", files["server cert"], "--key", files["server key"],
             "--client-ca", files["ca"]],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            banner = sim.stdout.readline()
            # "switchyard sim: listening on 127.0.0.1:PORT (..."
            if "listening on " not in banner:
                fail(f"no address in the simulator's first line: {banner!r}")
            host, port = banner.split("listening on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)
            addr = (host, int(port))
            check_session(addr, files, ssl.TLSVersion.TLSv1_3)
            check_session(addr, files, ssl.TLSVersion.TLSv1_2)
            check_refused_without_certificate(addr, files)
        finally:
            sim.terminate()
            sim.wait(timeout=TIMEOUT)
    print("TLS interoperability: all checks passed")


if __name__ == "__main__":
    main()
