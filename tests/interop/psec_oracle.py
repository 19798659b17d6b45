#!/usr/bin/env python3
"""psec (PyPI) as an independent oracle for switchyard::security.

Both directions, 300 random cases each:

* MACs: Switchyard makes ISO 9797-1 algorithm 3 (retail) MACs, psec checks
  them; psec makes them, Switchyard verifies them (and refuses every one
  with a bit flipped). AES-CMAC against Python's `cryptography`.
* PIN blocks: psec encrypts a PIN (format 0 under TDES, format 4 under
  AES), Switchyard translates it to another key and format, psec decrypts
  the result and finds the PIN; psec's blocks are checked by Switchyard
  (and refused under a wrong key).
* KCVs (TDES: psec; AES: CMAC of a zero block with `cryptography`).
* TR-31 version D key blocks: Switchyard's unwrapped by psec.tr31, psec's
  by Switchyard.

The Switchyard side is `examples/security_oracle.rs` (JSON lines over a
pipe). Usage: psec_oracle.py --oracle target/debug/examples/security_oracle
[--seed N] [--cases 300]
"""

import argparse
import json
import os
import random
import subprocess
import sys
import warnings

# psec drives cryptography's TripleDES, which warns on every call.
warnings.filterwarnings("ignore")

import psec  # noqa: E402
from cryptography.hazmat.primitives import cmac  # noqa: E402
from cryptography.hazmat.primitives.ciphers import algorithms  # noqa: E402


def rand_bytes(rng, n):
    return bytes(rng.getrandbits(8) for _ in range(n))


def rand_digits(rng, lo, hi):
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(lo, hi)))


def aes_cmac(key, data):
    c = cmac.CMAC(algorithms.AES(key))
    c.update(data)
    return c.finalize()


def tdes_pin_block(key, pin, pan):
    return psec.des.encrypt_tdes_ecb(key, psec.pinblock.encode_pinblock_iso_0(pin, pan))


def tdes_pin(key, block, pan):
    return psec.pinblock.decode_pinblock_iso_0(psec.des.decrypt_tdes_ecb(key, block), pan)


class Oracle:
    """The Switchyard process: requests batched, answers read in order."""

    def __init__(self, path):
        self.path = path

    def run(self, requests):
        data = "".join(json.dumps(r) + "\n" for r in requests)
        out = subprocess.run(
            [self.path], input=data, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        if len(out) != len(requests):
            sys.exit(f"oracle answered {len(out)} of {len(requests)} requests")
        answers = [json.loads(line) for line in out]
        for req, ans in zip(requests, answers):
            if "request_error" in ans:
                sys.exit(f"oracle refused a request ({ans['request_error']}): op {req['op']}")
        return answers


class Tally:
    def __init__(self):
        self.passed = 0
        self.failures = []

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)


def macs(rng, n, oracle, t):
    # Switchyard makes, psec checks.
    cases = []
    for _ in range(n):
        key = rand_bytes(rng, 16)
        data = rand_bytes(rng, rng.randint(0, 200))
        cases.append((key, data, rng.choice([1, 2])))
    answers = oracle.run(
        [
            {"op": "mac", "alg": "retail", "key": k.hex(), "key_alg": "tdes", "data": d.hex(), "padding": p}
            for k, d, p in cases
        ]
    )
    for (k, d, p), a in zip(cases, answers):
        want = psec.mac.generate_retail_mac(k[:8], k[8:], d, p).hex().upper()
        t.check(a["mac"] == want, f"retail MAC made by Switchyard, {len(d)} bytes, padding {p}")

    # psec makes, Switchyard verifies; every other one tampered.
    reqs, expect = [], []
    for i in range(n):
        key = rand_bytes(rng, 16)
        data = rand_bytes(rng, rng.randint(0, 200))
        p = rng.choice([1, 2])
        m = bytearray(psec.mac.generate_retail_mac(key[:8], key[8:], data, p))
        bad = i % 2 == 1
        if bad:
            m[rng.randrange(8)] ^= 1 << rng.randrange(8)
        reqs.append({"op": "verify_mac", "alg": "retail", "key": key.hex(), "key_alg": "tdes",
                     "data": data.hex(), "padding": p, "mac": bytes(m).hex()})
        expect.append(not bad)
    for a, ok in zip(oracle.run(reqs), expect):
        t.check(a["ok"] == ok, f"retail MAC made by psec, expected {'ok' if ok else 'refused'}: {a}")

    # AES-CMAC both ways against cryptography.
    cases = []
    for _ in range(n // 3):
        key = rand_bytes(rng, rng.choice([16, 24, 32]))
        data = rand_bytes(rng, rng.randint(0, 200))
        cases.append((key, data))
    answers = oracle.run(
        [{"op": "mac", "alg": "cmac", "key": k.hex(), "key_alg": "aes", "data": d.hex()} for k, d in cases]
        + [{"op": "verify_mac", "alg": "cmac", "key": k.hex(), "key_alg": "aes", "data": d.hex(),
            "mac": aes_cmac(k, d).hex()} for k, d in cases]
    )
    for (k, d), a in zip(cases, answers[: len(cases)]):
        t.check(a["mac"] == aes_cmac(k, d).hex().upper(), "AES-CMAC made by Switchyard")
    for a in answers[len(cases):]:
        t.check(a["ok"] is True, f"AES-CMAC made by cryptography: {a}")


def pins(rng, n, oracle, t):
    def new_key(fmt):
        return rand_bytes(rng, 16) if fmt == 0 else rand_bytes(rng, rng.choice([16, 24, 32]))

    def alg(fmt):
        return "tdes" if fmt == 0 else "aes"

    def encrypt(fmt, key, pin, pan):
        if fmt == 0:
            return tdes_pin_block(key, pin, pan)
        return psec.pinblock.encipher_pinblock_iso_4(key, pin, pan)

    def decrypt(fmt, key, block, pan):
        if fmt == 0:
            return tdes_pin(key, block, pan)
        return psec.pinblock.decipher_pinblock_iso_4(key, block, pan)

    # psec encrypts, Switchyard translates, psec decrypts.
    cases = []
    for _ in range(n):
        pin, pan = rand_digits(rng, 4, 12), rand_digits(rng, 13, 19)
        src, dst = rng.choice([0, 4]), rng.choice([0, 4])
        k1, k2 = new_key(src), new_key(dst)
        cases.append((pin, pan, src, dst, k1, k2, encrypt(src, k1, pin, pan)))
    answers = oracle.run(
        [
            {"op": "translate", "pan": pan, "block": b.hex(), "from_key": k1.hex(), "from_alg": alg(src),
             "to_key": k2.hex(), "to_alg": alg(dst), "to_format": dst}
            for pin, pan, src, dst, k1, k2, b in cases
        ]
    )
    for (pin, pan, src, dst, k1, k2, b), a in zip(cases, answers):
        if "block" not in a:
            t.check(False, f"translation {src} -> {dst} refused: {a.get('error')}")
            continue
        out = bytes.fromhex(a["block"])
        t.check(len(out) == (8 if dst == 0 else 16), f"translated block length {len(out)}")
        try:
            got = decrypt(dst, k2, out, pan)
        except ValueError as e:
            t.check(False, f"psec could not decrypt a {src} -> {dst} translation: {e}")
            continue
        t.check(got == pin, f"translation {src} -> {dst}: psec finds another PIN")

    # psec encrypts, Switchyard checks (the right key, then a wrong one).
    reqs = []
    for _ in range(n):
        pin, pan = rand_digits(rng, 4, 12), rand_digits(rng, 13, 19)
        fmt = rng.choice([0, 4])
        key = new_key(fmt)
        block = encrypt(fmt, key, pin, pan)
        reqs.append({"op": "check_pin", "key": key.hex(), "key_alg": alg(fmt), "block": block.hex(),
                     "pan": pan, "pin": pin})
        wrong = bytearray(key)
        wrong[0] ^= 0x10
        reqs.append({"op": "check_pin", "key": bytes(wrong).hex(), "key_alg": alg(fmt),
                     "block": block.hex(), "pan": pan, "pin": pin})
    answers = oracle.run(reqs)
    for i, a in enumerate(answers):
        if i % 2 == 0:
            t.check(a["ok"] is True, f"PIN block made by psec refused: {a.get('error')}")
        else:
            t.check(a["ok"] is False and "error" in a, "a PIN block under a wrong key was accepted")
            if "error" in a:
                t.check(reqs[i]["pin"] not in a["error"], "an error message holds the PIN")


def kcvs(rng, n, oracle, t):
    cases = [(rand_bytes(rng, rng.choice([16, 24])), "tdes") for _ in range(n // 2)]
    cases += [(rand_bytes(rng, rng.choice([16, 24, 32])), "aes") for _ in range(n // 2)]
    answers = oracle.run([{"op": "kcv", "key": k.hex(), "key_alg": a} for k, a in cases])
    for (k, a), ans in zip(cases, answers):
        want = psec.des.generate_kcv(k, 3) if a == "tdes" else aes_cmac(k, bytes(16))[:3]
        t.check(ans["kcv"] == want.hex().upper(), f"{a} KCV")


def key_blocks(rng, n, oracle, t):
    # Switchyard wraps, psec unwraps.
    cases = []
    for i in range(n):
        kbpk = rand_bytes(rng, rng.choice([16, 24, 32]))
        if i % 2 == 0:
            key, alg, usage, mode = rand_bytes(rng, rng.choice([16, 24])), "tdes", "P0", "B"
        else:
            key, alg, usage, mode = rand_bytes(rng, rng.choice([16, 24, 32])), "aes", "M6", "C"
        cases.append((kbpk, key, alg, usage, mode, f"key.{i}"))
    answers = oracle.run(
        [{"op": "wrap", "kbpk": kb.hex(), "key": k.hex(), "key_alg": a, "usage": u, "mode": m, "name": nm}
         for kb, k, a, u, m, nm in cases]
    )
    for (kb, k, a, u, m, nm), ans in zip(cases, answers):
        try:
            header, key = psec.tr31.unwrap(kb, ans["block"])
        except ValueError as e:
            t.check(False, f"psec refused Switchyard's key block: {e}")
            continue
        t.check(key == k and header.key_usage == u and header.mode_of_use == m
                and header.blocks["LB"] == nm, "psec unwrapped another key or header")

    # psec wraps, Switchyard unwraps (and refuses under another KBPK).
    reqs, keys = [], []
    for i in range(n):
        kbpk = rand_bytes(rng, rng.choice([16, 24, 32]))
        if i % 2 == 0:
            key, header = rand_bytes(rng, rng.choice([16, 24])), "D0000P0TB00E0000"
        else:
            key, header = rand_bytes(rng, rng.choice([16, 24, 32])), "D0000K0AB00E0100LB09zmk.9"
        block = psec.tr31.wrap(kbpk, header, key)
        reqs.append({"op": "unwrap", "kbpk": kbpk.hex(), "block": block})
        other = bytearray(kbpk)
        other[-1] ^= 1
        reqs.append({"op": "unwrap", "kbpk": bytes(other).hex(), "block": block})
        keys.append(key)
    answers = oracle.run(reqs)
    for i, key in enumerate(keys):
        good, bad = answers[2 * i], answers[2 * i + 1]
        t.check(good.get("key") == key.hex().upper(), f"Switchyard could not unwrap psec's block: {good}")
        t.check("error" in bad and "MAC" in bad["error"], f"a block unwrapped under another KBPK: {bad}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="target/debug/examples/security_oracle")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("PSEC_ORACLE_SEED", "0")) or None)
    ap.add_argument("--cases", type=int, default=300)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**32)
    rng = random.Random(seed)
    oracle = Oracle(args.oracle)
    t = Tally()
    macs(rng, args.cases, oracle, t)
    pins(rng, args.cases, oracle, t)
    kcvs(rng, 100, oracle, t)
    key_blocks(rng, 100, oracle, t)
    for f in t.failures[:20]:
        print("FAILED:", f)
    print(f"psec oracle (seed {seed}, psec {psec.__version__}): {t.passed} checks passed, "
          f"{len(t.failures)} failed")
    if t.failures:
        print(f"replay: {sys.argv[0]} --oracle {args.oracle} --seed {seed}")
        sys.exit(1)


if __name__ == "__main__":
    main()
