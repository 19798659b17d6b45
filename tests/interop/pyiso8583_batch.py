"""A terminal's batch, built by an independent ISO 8583 library (pyiso8583):
sales, refunds and a reversal through the switch, then the batch close
(0500) with the totals the terminal counted from its own answers, checked
against the switch's 0510.

Usage:
  python pyiso8583_batch.py sell HOST:PORT TID BATCH STAN STATE
      sends the sales of one batch (STAN, STAN+1, ...) and writes what the
      terminal counted (the approved answers only) to the file STATE;
  python pyiso8583_batch.py close HOST:PORT STATE
      closes with those totals (920000): expects 00;
  python pyiso8583_batch.py disputed HOST:PORT STATE
      closes claiming one more purchase of 1.00 than the switch approved
      (an offline sale it never saw): expects 95 with the switch's own
      totals in DE74-DE77/DE86-DE89/DE97, uploads its transactions (0320,
      the extra one too), closes after upload (960000): expects 00.

Prints one line per close, e.g. "0510 39=95 batch=000002"; exits non-zero
on any answer other than the expected.
"""

import json
import socket
import struct
import sys

import iso8583
from iso8583.specs import default_ascii as spec

PAN = "4761739001010010"
# (MTI, processing code, amount in cents); the 0400 reverses the second;
# the last is over the test simulator's limit (declined 51, not counted).
SALES = [
    ("0200", "000000", 1500),
    ("0200", "000000", 2500),
    ("0200", "200000", 700),
    ("0400", "000000", 2500),
    ("0200", "000000", 6000),
]
FIELDS = {
    "credits": "74",
    "credit_reversals": "75",
    "debits": "76",
    "debit_reversals": "77",
    "credits_amount": "86",
    "credit_reversals_amount": "87",
    "debits_amount": "88",
    "debit_reversals_amount": "89",
}


def exchange(sock, doc):
    raw, _ = iso8583.encode(doc, spec)
    sock.sendall(struct.pack(">H", len(raw)) + raw)
    (length,) = struct.unpack(">H", recv_exact(sock, 2))
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


def side(pc):
    kind = pc[:2]
    if kind in ("00", "01", "09"):
        return "debit"
    if kind in ("02", "20"):
        return "credit"
    return None


def count(totals, mti, pc, amount):
    s = side(pc)
    if s is None:
        return
    name = s + ("_reversals" if mti.startswith("04") else "s")
    totals[name] += 1
    totals[name + "_amount"] += amount


def empty():
    return {k: 0 for k in FIELDS}


def net(t):
    debit = t["debits_amount"] - t["debit_reversals_amount"]
    credit = t["credits_amount"] - t["credit_reversals_amount"]
    n = debit - credit
    return ("C" if n < 0 else "D") + f"{abs(n):016d}"


def base(state, mti, stan):
    return {
        "t": mti,
        "7": "1201101010",
        "11": f"{stan:06d}",
        "41": state["tid"],
        "42": "PYMERCHANT00001",
        "49": "840",
        "60": state["batch"],
    }


def sell(sock, tid, batch, stan, path):
    state = {"tid": tid, "batch": batch, "stan": stan, "totals": empty(), "standing": []}
    approved = {}
    for i, (mti, pc, amount) in enumerate(SALES):
        doc = base(state, mti, stan + i)
        rrn = f"{stan + (1 if mti == '0400' else i):012d}"
        doc.update({"2": PAN, "3": pc, "4": f"{amount:012d}", "37": rrn})
        answer = exchange(sock, doc)
        if answer.get("39") != "00":
            print(f"{answer['t']} 39={answer.get('39')} 11={doc['11']} (not counted)")
            continue
        count(state["totals"], mti, pc, amount)
        if mti == "0400":
            approved.pop(rrn, None)
        else:
            approved[rrn] = (pc, amount)
    state["standing"] = list(approved.values())
    state["stan"] = stan + len(SALES)
    with open(path, "w") as f:
        json.dump(state, f)


def close_doc(state, pc, totals, stan):
    doc = base(state, "0500", stan)
    doc["3"] = pc
    for name, field in FIELDS.items():
        digits = 10 if int(field) <= 81 else 16
        doc[field] = f"{totals[name]:0{digits}d}"
    doc["97"] = net(totals)
    return doc


def expect(answer, code, state):
    print(f"{answer['t']} 39={answer.get('39')} batch={state['batch']}")
    if answer["t"] != "0510" or answer.get("39") != code:
        raise SystemExit(f"expected 0510 with {code}: {answer}")
    if answer.get("60") != state["batch"]:
        raise SystemExit(f"the 0510 does not echo the batch: {answer}")


def switch_totals(answer):
    return {name: int(answer.get(field, "-1")) for name, field in FIELDS.items()}


def close(sock, state):
    answer = exchange(sock, close_doc(state, "920000", state["totals"], state["stan"]))
    expect(answer, "00", state)
    if switch_totals(answer) != state["totals"] or answer.get("97") != net(state["totals"]):
        raise SystemExit(f"the 0510's totals are not the batch's: {answer}")


def disputed(sock, state):
    claimed = dict(state["totals"])
    claimed["debits"] += 1
    claimed["debits_amount"] += 100
    stan = state["stan"]
    answer = exchange(sock, close_doc(state, "920000", claimed, stan))
    expect(answer, "95", state)
    # The switch's own totals: what the terminal was told approved.
    if switch_totals(answer) != state["totals"]:
        raise SystemExit(f"95 without the switch's totals: {answer} vs {state['totals']}")
    if answer.get("97") != net(state["totals"]):
        raise SystemExit(f"95 with the wrong DE97: {answer}")
    got = switch_totals(answer)
    print("switch totals " + " ".join(f"{field}={got[name]}" for name, field in FIELDS.items()))
    # The upload: what stands, and the sale the switch never saw.
    for i, (pc, amount) in enumerate(state["standing"] + [("000000", 100)]):
        doc = base(state, "0320", stan + 1 + i)
        doc.update({"2": PAN, "3": pc, "4": f"{amount:012d}", "37": f"{stan + 1 + i:012d}"})
        up = exchange(sock, doc)
        if up["t"] != "0330" or up.get("39") != "00":
            raise SystemExit(f"upload not acknowledged: {up}")
    answer = exchange(sock, close_doc(state, "960000", claimed, stan + 10))
    expect(answer, "00", state)


def main():
    command, addr = sys.argv[1], sys.argv[2]
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        if command == "sell":
            tid, batch, stan, path = sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
            sell(sock, tid, batch, stan, path)
            return
        with open(sys.argv[3]) as f:
            state = json.load(f)
        if command == "close":
            close(sock, state)
        elif command == "disputed":
            disputed(sock, state)
        else:
            raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
