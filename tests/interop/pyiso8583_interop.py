"""Interoperability test: Switchyard's ISO 8583 codec against pyiso8583.

For three specs, generates seeded random messages (MTIs 0100..0800, random
field subsets over both bitmaps, every field type, DE55 binary) and checks
both directions:

* pyiso8583 encodes -> our codec decodes: same MTI, same field set, every
  field value identical;
* our codec encodes -> pyiso8583 decodes: same, and the frame must be
  byte-identical to pyiso8583's own encoding of the same message.

The specs paired:

* our `iso87ascii`   <-> pyiso8583 `default_ascii`
* our `iso87binary`  <-> a pyiso8583 spec dict built below (BCD numerics
                         and length prefixes, binary bitmap, as jPOS
                         ISO87BPackager and our specs.rs lay it out)
* `config/specs/pyiso8583-default.toml` (a spec loaded from a file at run
  time) <-> pyiso8583 `default`

Our side is `examples/iso8583_peer.rs`, driven over JSON lines. Values cross
that boundary as the uppercase hex of the field's logical value (the text of
n/an/ans/z/x+n fields, the raw bytes of b fields); see that file.

Also: lower-case hex characters in hex-carried binary fields must decode
alike; truncated frames must be refused and corrupted ones never make the
peer panic, and a corrupted frame that both libraries accept must decode
the same in both; malformed requests must be refused. DE65 is never
generated (see EXCLUDED).

Usage: python pyiso8583_interop.py --peer target/debug/examples/iso8583_peer
       [--count 300] [--seed 8583]
Prints one summary line per spec and direction; exits 1 on any mismatch,
listing the first ones.
"""

import argparse
import json
import os
import random
import subprocess
import sys

import iso8583
from iso8583 import specs as pyspecs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOML_SPEC = os.path.join(REPO, "config", "specs", "pyiso8583-default.toml")

MTIS = ["0100", "0110", "0200", "0210", "0400", "0420", "0800"]

# ISO 8583:1987 attribute of each data element, as protocol/src/iso8583/specs.rs
# has it (`xn` is x+n, a C/D sign then digits).
KIND = {}
for _n in range(2, 129):
    KIND[_n] = "ans"
for _n in list(range(2, 28)) + [32, 33, 53] + list(range(66, 91)) + [99, 100]:
    KIND[_n] = "n"
for _n in [28, 29, 30, 31, 97]:
    KIND[_n] = "xn"
KIND[35] = "z"
for _n in [37, 38, 39, 40, 49, 50, 51, 91, 92, 93, 94, 95]:
    KIND[_n] = "an"
for _n in [52, 55, 64, 65, 96, 128]:
    KIND[_n] = "b"

# Fields never generated, in any spec:
# * DE65: pyiso8583 treats bit 65 as the *tertiary bitmap* indicator (ISO
#   8583:2003 style, fields 129-192): encode() silently drops a DE65 value
#   and decode() reads 8/16 more bytes of bitmap where we read DE65 data.
#   The two libraries can not agree on a message carrying DE65.
EXCLUDED = {65}


def iso87binary_pyspec():
    """pyiso8583 mirror of our `iso87binary` (protocol/src/iso8583/specs.rs): the
    1987 sizes of `default_ascii`, with
    * MTI as 2 BCD bytes, bitmaps as 8 raw bytes;
    * n and z fields packed BCD, lengths in digits (nibbles); fixed odd
      numerics left padded with 0, variable odd numerics and track 2 right
      padded with 0 (jPOS IFB_LLNUM with pad=false);
    * x+n fields (DE28-31, DE97): one ASCII sign byte then the BCD digits.
      pyiso8583 has no such mixed type, so they are declared as fixed binary
      fields of the same width and the test converts: `C00001234` is
      `4300001234` on the pyiso8583 side;
    * b fields raw bytes, sized in bytes (half the hex characters of
      default_ascii), except DE96 which is 16 bytes (as jPOS);
    * an/ans fields ASCII;
    * every length prefix BCD: LL one byte, LLL two bytes.
    """
    base = pyspecs.default_ascii
    spec = {
        "h": dict(base["h"]),
        "t": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 2, "desc": "MTI"},
        "p": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 8, "desc": "Bitmap"},
        "1": {"data_enc": "b", "len_enc": "ascii", "len_type": 0, "max_len": 8, "desc": "Bitmap"},
    }
    for n in range(2, 129):
        f = base[str(n)]
        kind = KIND[n]
        digits = f["len_type"]  # ASCII prefix digits: 0 (fixed), 2 or 3
        d = {
            "len_enc": "bcd",
            "len_type": (digits + 1) // 2,
            "max_len": f["max_len"],
            "desc": f.get("desc", ""),
        }
        if kind in ("n", "z"):
            d.update(data_enc="b", len_count="nibbles")
            if digits == 0:
                d["left_pad"] = "0"
            else:
                d["right_pad"] = "0"
        elif kind == "xn":
            assert digits == 0
            # sign byte + (max_len - 1) digits, two per byte (always even here)
            d.update(data_enc="b", max_len=1 + (f["max_len"] - 1) // 2)
        elif kind == "b":
            d.update(data_enc="b", max_len=16 if n == 96 else f["max_len"] // 2)
        else:
            d.update(data_enc="ascii")
        spec[str(n)] = d
    return spec


class Pairing:
    """One of our specs, its pyiso8583 counterpart, and how a field's
    logical value (bytes) maps to the string pyiso8583 uses for it."""

    def __init__(self, label, ours, pyspec, track_sep):
        self.label = label
        self.ours = ours
        self.py = pyspec
        self.track_sep = track_sep

    def codec(self, n):
        f = self.py[str(n)]
        if KIND[n] == "xn" and f["data_enc"] == "b":
            return "xn_bcd"
        if KIND[n] == "b":
            return "hex"  # raw bytes, or hex characters: pyiso8583 gives hex either way
        return "text"  # ASCII text, or BCD digits given as a digit string

    def shape(self, n):
        """(fixed, max) in logical units: characters, or bytes for b."""
        f = self.py[str(n)]
        codec = self.codec(n)
        if codec == "xn_bcd":
            return True, 1 + 2 * (f["max_len"] - 1)
        if KIND[n] == "b" and f["data_enc"] != "b":
            return f["len_type"] == 0, f["max_len"] // 2
        return f["len_type"] == 0, f["max_len"]

    def to_py(self, n, logical):
        codec = self.codec(n)
        if codec == "hex":
            return logical.hex().upper()
        if codec == "xn_bcd":
            return logical[:1].hex().upper() + logical[1:].decode("ascii")
        return logical.decode("ascii")

    def from_py(self, n, value):
        codec = self.codec(n)
        if codec == "hex":
            return bytes.fromhex(value)
        if codec == "xn_bcd":
            return bytes.fromhex(value[:2]) + value[2:].encode("ascii")
        return value.encode("ascii")


PRINTABLE = bytes(range(0x20, 0x7F))
ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 "
DIGITS = b"0123456789"


def gen_value(rng, kind, fixed, max_len, track_sep):
    if fixed:
        length = max_len
    else:
        r = rng.random()
        if r < 0.05:
            length = 0
        elif r < 0.15:
            length = max_len
        elif r < 0.6:
            length = rng.randint(1, min(max_len, 24))
        else:
            length = rng.randint(1, max_len)
    if kind == "n":
        return bytes(rng.choice(DIGITS) for _ in range(length))
    if kind == "an":
        return bytes(rng.choice(ALNUM) for _ in range(length))
    if kind == "ans":
        return bytes(rng.choice(PRINTABLE) for _ in range(length))
    if kind == "b":
        return bytes(rng.getrandbits(8) for _ in range(length))
    if kind == "xn":
        return bytes([rng.choice(b"CD")]) + bytes(rng.choice(DIGITS) for _ in range(length - 1))
    if kind == "z":
        v = bytearray(rng.choice(DIGITS) for _ in range(length))
        if length >= 3:
            v[rng.randint(1, length - 2)] = track_sep
        return bytes(v)
    raise AssertionError(kind)


def gen_message(rng, pairing):
    """A message as {field: logical bytes} plus its MTI."""
    fields = [n for n in range(2, 129) if n not in EXCLUDED]
    style = rng.random()
    if style < 0.2:
        chosen = rng.sample([n for n in fields if n <= 64], rng.randint(1, 12))
    elif style < 0.4:
        chosen = rng.sample(fields, rng.randint(1, 6)) + [rng.choice([n for n in fields if n > 64])]
    else:
        chosen = rng.sample(fields, rng.randint(1, 30))
    if rng.random() < 0.5:
        chosen.append(55)
    msg = {}
    for n in sorted(set(chosen)):
        fixed, max_len = pairing.shape(n)
        msg[n] = gen_value(rng, KIND[n], fixed, max_len, pairing.track_sep)
    return rng.choice(MTIS), msg


def py_doc(pairing, mti, msg):
    doc = {"t": mti}
    for n, v in msg.items():
        doc[str(n)] = pairing.to_py(n, v)
    return doc


def run_peer(peer, requests):
    """Sends all requests in one go; returns the answers in order."""
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests)
    proc = subprocess.run([peer], input=data, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"peer {peer} exited with {proc.returncode}: {proc.stderr[-2000:]}")
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    if len(answers) != len(requests):
        sys.exit(f"peer answered {len(answers)} of {len(requests)} requests")
    return answers


def check_decoded(answer, mti, msg, frame, where, failures):
    """Compares our peer's decode answer with the message; records any
    mismatch in `failures` and returns whether it matched."""
    if not answer.get("ok"):
        failures.append(f"{where}\n    our decoder refused {frame.hex().upper()}: {answer.get('error')}")
        return False
    got = {int(n): bytes.fromhex(v) for n, v in answer["fields"].items()}
    problems = []
    if answer["mti"] != mti:
        problems.append(f"MTI {answer['mti']} != {mti}")
    if set(got) != set(msg):
        problems.append(f"fields {sorted(got)} != {sorted(msg)}")
    for n in sorted(set(got) & set(msg)):
        if got[n] != msg[n]:
            problems.append(f"DE{n}: ours {got[n].hex().upper()} != pyiso8583 {msg[n].hex().upper()}")
    if problems:
        failures.append(f"{where}\n    " + "\n    ".join(problems))
        return False
    return True


def describe(msg):
    return " ".join(f"{n}={v.hex().upper()[:40]}" for n, v in sorted(msg.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", required=True, help="path to the iso8583_peer example binary")
    ap.add_argument("--count", type=int, default=300, help="messages per spec")
    ap.add_argument("--seed", type=int, default=8583)
    args = ap.parse_args()

    pairings = [
        Pairing("iso87ascii <-> pyiso8583 default_ascii", "iso87ascii", pyspecs.default_ascii, ord("=")),
        Pairing("iso87binary <-> pyiso8583 iso87binary mirror", "iso87binary", iso87binary_pyspec(), ord("D")),
        Pairing(
            "config/specs/pyiso8583-default.toml <-> pyiso8583 default",
            TOML_SPEC,
            pyspecs.default,
            ord("="),
        ),
    ]

    failures = []
    summaries = []
    robustness_frames = []
    lower_cases = []  # as `cases`, frames with lower-case hex characters
    requests = []
    cases = []  # (pairing, index within the pairing, mti, msg, py_frame)
    for i, pairing in enumerate(pairings):
        rng = random.Random(f"{args.seed}/{i}")
        for _ in range(args.count):
            mti, msg = gen_message(rng, pairing)
            try:
                frame, _ = iso8583.encode(py_doc(pairing, mti, msg), pairing.py)
            except iso8583.EncodeError as e:
                sys.exit(f"test bug: pyiso8583 refuses a generated message ({pairing.label}): {e}")
            frame = bytes(frame)
            cases.append((pairing, len(cases) % args.count, mti, msg, frame))
            requests.append({"op": "decode", "spec": pairing.ours, "hex": frame.hex().upper()})
            requests.append(
                {
                    "op": "encode",
                    "spec": pairing.ours,
                    "mti": mti,
                    "fields": {str(n): v.hex().upper() for n, v in msg.items()},
                }
            )
            # Robustness: a truncated copy and a corrupted copy of the frame.
            cut = frame[: rng.randrange(len(frame))]
            bad = bytearray(frame)
            for _ in range(rng.randint(1, 4)):
                bad[rng.randrange(len(bad))] = rng.getrandbits(8)
            robustness_frames.append((pairing, cut, True))
            robustness_frames.append((pairing, bytes(bad), False))
            # Binary fields sent as hex characters may come in lower case
            # from other implementations: our decoder must read them alike.
            hex_text = [n for n in msg if KIND[n] == "b" and pairing.py[str(n)]["data_enc"] != "b"]
            if hex_text:
                doc = py_doc(pairing, mti, msg)
                for n in hex_text:
                    doc[str(n)] = doc[str(n)].lower()
                lower_frame, _ = iso8583.encode(doc, pairing.py)
                lower_cases.append((pairing, cases[-1][1], mti, msg, bytes(lower_frame)))

    for pairing in pairings:
        seen = set()
        for c in cases:
            if c[0] is pairing:
                seen.update(c[3])
        missing = sorted(set(range(2, 129)) - EXCLUDED - seen)
        if missing:
            failures.append(f"coverage: {pairing.label}: fields never generated: {missing} (raise --count)")
    for pairing, frame, _ in robustness_frames:
        requests.append({"op": "decode", "spec": pairing.ours, "hex": frame.hex()})
    for pairing, _, _, _, frame in lower_cases:
        requests.append({"op": "decode", "spec": pairing.ours, "hex": frame.hex()})
    # Malformed requests must be refused, not crash the peer.
    junk = [
        "not json",
        {"op": "decode"},
        {"op": "decode", "spec": "no-such-spec", "hex": ""},
        {"op": "decode", "spec": "iso87ascii", "hex": "0"},
        {"op": "decode", "spec": "iso87ascii", "hex": "zz"},
        {"op": "encode", "spec": "iso87ascii", "mti": "02x0", "fields": {}},
        {"op": "encode", "spec": "iso87ascii", "mti": "0200", "fields": {"1": "00"}},
        {"op": "encode", "spec": "iso87ascii", "mti": "0200", "fields": {"129": "00"}},
        {"op": "encode", "spec": "iso87ascii", "mti": "0200", "fields": {"4": "41"}},
        {"op": "encode", "spec": "iso87binary", "mti": "0200", "fields": {"2": "3" * 40}},
        {"op": "frobnicate", "spec": "iso87ascii"},
    ]
    requests_json = requests + junk
    answers = run_peer(args.peer, requests_json)

    stats = {p.label: {"dec_ok": 0, "dec_fields": 0, "enc_ok": 0, "enc_fields": 0, "identical": 0} for p in pairings}
    for k, (pairing, index, mti, msg, py_frame) in enumerate(cases):
        st = stats[pairing.label]
        where = f"{pairing.label}, message {index}: {mti} {describe(msg)}"

        # pyiso8583 -> us
        if check_decoded(answers[2 * k], mti, msg, py_frame, f"pyiso8583 -> switchyard: {where}", failures):
            st["dec_ok"] += 1
            st["dec_fields"] += len(msg)

        # us -> pyiso8583
        a = answers[2 * k + 1]
        if not a.get("ok"):
            failures.append(f"switchyard -> pyiso8583: {where}\n    our encoder refused it: {a.get('error')}")
            continue
        ours = bytes.fromhex(a["hex"])
        problems = []
        try:
            doc, _ = iso8583.decode(ours, pairing.py)
        except iso8583.DecodeError as e:
            failures.append(f"switchyard -> pyiso8583: {where}\n    pyiso8583 refused {a['hex']}: {e}")
            continue
        got = {int(n): pairing.from_py(int(n), v) for n, v in doc.items() if n.isdigit() and n != "1"}
        if doc["t"] != mti:
            problems.append(f"MTI {doc['t']} != {mti}")
        if set(got) != set(msg):
            problems.append(f"fields {sorted(got)} != {sorted(msg)}")
        for n in sorted(set(got) & set(msg)):
            if got[n] != msg[n]:
                problems.append(f"DE{n}: pyiso8583 {got[n].hex().upper()} != sent {msg[n].hex().upper()}")
        if ours != py_frame:
            problems.append(f"frames differ:\n      ours     {ours.hex().upper()}\n      pyiso8583 {py_frame.hex().upper()}")
        else:
            st["identical"] += 1
        if problems:
            failures.append(f"switchyard -> pyiso8583: {where}\n    " + "\n    ".join(problems))
        else:
            st["enc_ok"] += 1
            st["enc_fields"] += len(msg)

    base = 2 * len(cases)
    lower_base = base + len(robustness_frames)
    lower_ok = 0
    for j, (pairing, index, mti, msg, frame) in enumerate(lower_cases):
        where = f"pyiso8583 (lower-case hex) -> switchyard: {pairing.label}, message {index}: {mti} {describe(msg)}"
        if check_decoded(answers[lower_base + j], mti, msg, frame, where, failures):
            lower_ok += 1
    panics = 0
    refused = 0
    both_accepted = 0
    for j, (pairing, frame, is_cut) in enumerate(robustness_frames):
        a = answers[base + j]
        spec = pairing.ours
        if a.get("panic"):
            panics += 1
            failures.append(f"robustness: the peer panicked decoding {frame.hex().upper()} ({spec}): {a.get('error')}")
        elif is_cut and a.get("ok"):
            failures.append(f"robustness: a truncated frame was accepted ({spec}): {frame.hex().upper()}")
        elif not a.get("ok"):
            refused += 1
        else:
            # A corrupted frame we accept. We check numerics, hex and BCD
            # digits where pyiso8583 checks only that text is ASCII, so
            # either may refuse what the other takes; but a frame both
            # accept must decode to the same message.
            try:
                doc, _ = iso8583.decode(frame, pairing.py)
            except iso8583.DecodeError:
                continue
            if "65" in a["fields"]:
                continue  # bit 65: DE65 for us, a tertiary bitmap for pyiso8583 (see EXCLUDED)
            both_accepted += 1
            where = f"corrupted frame accepted by both: {pairing.label}"
            try:
                msg = {int(n): pairing.from_py(int(n), v) for n, v in doc.items() if n.isdigit() and n != "1"}
            except ValueError as e:
                failures.append(f"{where}: pyiso8583 gives values we refuse ({e}): {frame.hex().upper()}")
                continue
            check_decoded(a, doc["t"], msg, frame, where, failures)
    for r, a in zip(junk, answers[lower_base + len(lower_cases) :]):
        if a.get("ok") or a.get("panic"):
            failures.append(f"robustness: malformed request {r!r} answered {a}")

    for p in pairings:
        st = stats[p.label]
        summaries.append(
            f"{p.label}: pyiso8583 -> switchyard: {st['dec_ok']}/{args.count} messages identical ({st['dec_fields']} fields)"
        )
        summaries.append(
            f"{p.label}: switchyard -> pyiso8583: {st['enc_ok']}/{args.count} messages identical "
            f"({st['enc_fields']} fields), {st['identical']}/{args.count} frames byte-identical"
        )
    summaries.append(
        f"lower-case hex characters in binary fields: {lower_ok}/{len(lower_cases)} messages decoded identically"
    )
    summaries.append(
        f"robustness: {len(robustness_frames)} truncated/corrupted frames, {refused} refused, "
        f"{panics} panics, {both_accepted} accepted by both libraries and decoded alike; "
        f"{len(junk)} malformed requests refused"
        + ("" if not any(f.startswith("robustness: malformed") for f in failures) else " (NOT all)")
    )
    for line in summaries:
        print(line)
    if failures:
        print(f"\nFAILED: {len(failures)} mismatch(es); the first ones:", file=sys.stderr)
        for f in failures[:10]:
            print(f"  - {f}", file=sys.stderr)
        sys.exit(1)
    print("interop OK")


if __name__ == "__main__":
    main()
