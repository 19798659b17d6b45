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

With --through-switch the same checks run against `BIN run` instead,
between this client and that simulator: the switch's terminal listener
speaks TLS and requires a client certificate (`[terminals.tls]`), and its
link to the simulator is TLS too and presents the link's client
certificate (`[acquirers.tls]`), which the simulator requires. The 0810
comes from the switch, the 0210 from the simulator through the link. The
switch's /metrics must count the handshakes of both sides, and it must
exit 0 on SIGTERM.

Usage: python pyiso8583_tls_client.py --switchyard target/debug/switchyard
           [--through-switch]
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
import time
import urllib.error
import urllib.request

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


def check_session(addr, files, version, stan=314159):
    """0800 and 0200 over one session; `stan` (and stan - 1) must be new
    to a switch, which answers a repeated request from its memory."""
    ctx = context(files, version)
    with socket.create_connection(addr, timeout=TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            got = sock.version()
            want = {ssl.TLSVersion.TLSv1_3: "TLSv1.3", ssl.TLSVersion.TLSv1_2: "TLSv1.2"}[version]
            if got != want:
                fail(f"negotiated {got}, wanted {want}")
            echo_stan = f"{stan - 1:06d}"
            echo = exchange(sock, {"t": "0800", "7": "1201101010", "11": echo_stan, "70": "301"})
            print(f"{got} {echo['t']} 39={echo.get('39')} 11={echo.get('11')}")
            if (echo["t"], echo.get("39"), echo.get("11")) != ("0810", "00", echo_stan):
                fail(f"0800 answered {echo}")
            request = {
                "t": "0200",
                "2": "4761739001010010",
                "3": "000000",
                "4": "000000001500",
                "7": "1201101010",
                "11": f"{stan:06d}",
                "18": "5411",
                "37": f"{stan:012d}",
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


def first_line(proc, what):
    line = proc.stdout.readline()
    if not line:
        fail(f"{what} ended before printing its first line")
    return line


def switch_config(tmp, files, sim_addr):
    # Backslashes and quotes are not in the temporary paths; TOML literal
    # strings take them as they are.
    def lit(path):
        return "'" + path + "'"
    text = f"""
[terminals]
listen = "127.0.0.1:0"
[terminals.tls]
cert = {lit(files["server cert"])}
key = {lit(files["server key"])}
client_ca = {lit(files["ca"])}
require_client_cert = true
[admin]
listen = "127.0.0.1:0"
[[acquirers]]
name = "sim"
links = ["{sim_addr[0]}:{sim_addr[1]}"]
[acquirers.tls]
ca = {lit(files["ca"])}
cert = {lit(files["link client cert (CN SWITCH01)"])}
key = {lit(files["link client key"])}
server_name = "localhost"
[routing]
default = "sim"
[journal]
dir = {lit(os.path.join(tmp, "journal"))}
"""
    path = os.path.join(tmp, "switch.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def metric(body, name, label):
    """The sum of `name`'s samples whose labels contain `label`."""
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def through_switch(args, tmp, files, sim_addr):
    config = switch_config(tmp, files, sim_addr)
    log_path = os.path.join(tmp, "switch.log")
    with open(log_path, "w") as log:
        switch = subprocess.Popen(
            [args.switchyard, "run", "--allow-dev-key", "--config", config],
            stdout=subprocess.PIPE, stderr=log, text=True,
            env={**os.environ, "RUST_LOG": "warn"},
        )
    try:
        banner = first_line(switch, "switchyard run")
        # "switchyard: terminals on A, TLS terminals on A, metrics http://M/metrics; ..."
        if "TLS terminals on " not in banner or "metrics http://" not in banner:
            fail(f"no TLS or admin address in the switch's banner: {banner!r}")
        host, port = banner.split("TLS terminals on ", 1)[1].split(",", 1)[0].rsplit(":", 1)
        addr = (host, int(port))
        admin = banner.split("metrics http://", 1)[1].split("/", 1)[0]
        # The link signs on just after the banner: /health says when.
        deadline = time.monotonic() + TIMEOUT
        while True:
            status, body = get(f"http://{admin}/health")
            if status == 200 and '"status":"up"' in body:
                break
            if time.monotonic() > deadline:
                fail(f"the switch's link to the simulator never came up: {status} {body}")
            time.sleep(0.05)
        print(f"switch: terminals over TLS on {addr[0]}:{addr[1]}, link up over TLS")
        check_session(addr, files, ssl.TLSVersion.TLSv1_3, stan=100002)
        check_session(addr, files, ssl.TLSVersion.TLSv1_2, stan=200002)
        check_refused_without_certificate(addr, files)
        _, body = get(f"http://{admin}/metrics")
        name = "switchyard_tls_handshakes_total"
        terminals = metric(body, name, 'listener="terminals"')
        link = metric(body, name, 'listener="link"')
        print(f"switch: {terminals:.0f} terminal handshakes, {link:.0f} link handshake(s)")
        if terminals < 2 or link < 1:
            fail(f"handshakes not counted: terminals {terminals}, link {link}")
        switch.terminate()
        code = switch.wait(timeout=TIMEOUT)
        if code != 0:
            fail(f"the switch exited {code} on SIGTERM")
    except SystemExit:
        with open(log_path) as log:
            sys.stderr.write("switch log:\n" + log.read())
        raise
    finally:
        if switch.poll() is None:
            switch.kill()
            switch.wait(timeout=TIMEOUT)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--switchyard", required=True, help="the switchyard binary")
    parser.add_argument("--through-switch", action="store_true",
                        help="run the checks through `switchyard run`, TLS on both sides")
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
            banner = first_line(sim, "switchyard sim")
            # "switchyard sim: listening on 127.0.0.1:PORT (..."
            if "listening on " not in banner:
                fail(f"no address in the simulator's first line: {banner!r}")
            host, port = banner.split("listening on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)
            addr = (host, int(port))
            if args.through_switch:
                through_switch(args, tmp, files, addr)
            else:
                check_session(addr, files, ssl.TLSVersion.TLSv1_3)
                check_session(addr, files, ssl.TLSVersion.TLSv1_2)
                check_refused_without_certificate(addr, files)
        finally:
            sim.terminate()
            sim.wait(timeout=TIMEOUT)
    where = " through the switch" if args.through_switch else ""
    print(f"TLS interoperability{where}: all checks passed")


if __name__ == "__main__":
    main()
