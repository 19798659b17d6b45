"""An independent ISO 8583 client: pyiso8583 builds requests, sends them to
the switch over TCP with a 2-byte length header, and decodes the answers.

Usage: python pyiso8583_client.py HOST:PORT
Prints one line per answer, e.g. "0210 39=00 11=314159", and exits non-zero
if an answer is missing, malformed or does not echo the request.
"""

import socket
import struct
import sys

import iso8583
from iso8583.specs import default_ascii as spec


def exchange(sock, doc):
    raw, _ = iso8583.encode(doc, spec)
    sock.sendall(struct.pack(">H", len(raw)) + raw)
    header = recv_exact(sock, 2)
    (length,) = struct.unpack(">H", header)
    answer, _ = iso8583.decode(recv_exact(sock, length), spec)
    return answer


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise SystemExit("switch closed the connection")
        data += chunk
    return data


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        echo = exchange(sock, {"t": "0800", "7": "1125101010", "11": "271828", "70": "301"})
        print(f"{echo['t']} 39={echo.get('39')} 11={echo.get('11')}")
        assert echo["t"] == "0810" and echo.get("39") == "00" and echo.get("11") == "271828", echo

        request = {
            "t": "0200",
            "2": "4761739001010010",
            "3": "000000",
            "4": "000000001500",
            "7": "1125101010",
            "11": "314159",
            "18": "5411",
            "37": "000000314159",
            "41": "PYTERM01",
            "42": "PYMERCHANT00001",
            "49": "840",
        }
        answer = exchange(sock, request)
        print(f"{answer['t']} 39={answer.get('39')} 11={answer.get('11')}")
        assert answer["t"] == "0210", answer
        for field in ("2", "4", "11", "37", "41"):
            assert answer.get(field) == request[field], (field, answer.get(field))
        assert answer.get("39") == "00", answer
        assert len(answer.get("38", "")) == 6, answer


if __name__ == "__main__":
    main()
