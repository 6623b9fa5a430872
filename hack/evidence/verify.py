#!/usr/bin/env python3
"""Verify a podkey audit evidence bundle offline, without podkey's code.

    python3 verify.py BUNDLE_DIR [--checkpoint FILE ...] [--quiet]

Checks, from the files alone:
  * records.jsonl is gapless and in order (each record's "seq");
  * the content hash (SM3 or SHA-256 over every record as stored, each
    prefixed with its length) reaches, at every checkpoint record, the
    value the checkpoint signed; the first hash comes from a signed
    checkpoint (manifest.json "start") or the hash's start value;
  * every checkpoint signature (SM2 with SM3 and the default user id, or
    ECDSA P-256 with SHA-256) verifies with the key keys.json holds for
    its kid, and the checkpoint names that very key;
  * the period's last record is covered by a checkpoint (nothing was cut
    off the bundle's end), and every --checkpoint file (received from
    keyd's --audit-checkpoint-dir) is matched: a bundle that ends before
    one of them was truncated;
  * every approval's digest, and each requester's and approver's
    signature against the roster's public keys.

SM3 and SHA-256 come from hashlib; the elliptic-curve arithmetic is
written out below. Exit status: 0 verified, 1 tampered or unverifiable,
2 bad usage.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import struct
import sys

# --- elliptic curves ------------------------------------------------------

SM2 = dict(
    p=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF,
    a=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC,
    b=0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93,
    n=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123,
    gx=0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7,
    gy=0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0,
)
P256 = dict(
    p=0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
    a=0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFC,
    b=0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
    n=0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    gx=0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    gy=0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)
OID_SM2 = bytes.fromhex("06082a811ccf5501822d")
OID_P256 = bytes.fromhex("06082a8648ce3d030107")


def on_curve(c, pt):
    x, y = pt
    return (y * y - (x * x * x + c["a"] * x + c["b"])) % c["p"] == 0


def add(c, p1, p2):
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    p = c["p"]
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % p == 0:
        return None
    if p1 == p2:
        lam = (3 * x1 * x1 + c["a"]) * pow(2 * y1, -1, p) % p
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, p) % p
    x3 = (lam * lam - x1 - x2) % p
    return x3, (lam * (x1 - x3) - y1) % p


def mul(c, k, pt):
    r = None
    while k:
        if k & 1:
            r = add(c, r, pt)
        pt = add(c, pt, pt)
        k >>= 1
    return r


def der_signature(sig):
    """(r, s) of an ASN.1 DER ECDSA/SM2 signature."""
    if len(sig) < 8 or sig[0] != 0x30 or sig[1] != len(sig) - 2:
        raise ValueError("not a DER signature")
    out, i = [], 2
    for _ in range(2):
        if sig[i] != 0x02:
            raise ValueError("not a DER signature")
        n = sig[i + 1]
        out.append(int.from_bytes(sig[i + 2:i + 2 + n], "big"))
        i += 2 + n
    if i != len(sig):
        raise ValueError("trailing bytes after the signature")
    return out


def public_key(pem):
    """(curve, point) of a PEM SubjectPublicKeyInfo, SM2 or P-256."""
    body = "".join(l for l in pem.strip().splitlines() if not l.startswith("-----"))
    der = base64.b64decode(body)
    if OID_SM2 in der:
        c = SM2
    elif OID_P256 in der:
        c = P256
    else:
        raise ValueError("neither an SM2 nor a P-256 key")
    pt = der[-65:]
    if pt[0] != 4:
        raise ValueError("not an uncompressed point")
    xy = (int.from_bytes(pt[1:33], "big"), int.from_bytes(pt[33:], "big"))
    if not on_curve(c, xy):
        raise ValueError("the point is not on the curve")
    return c, xy


def verify(pem, message, sig):
    """SM2 (SM3, user id 1234567812345678) or ECDSA P-256 (SHA-256)."""
    c, q = public_key(pem)
    r, s = der_signature(sig)
    n = c["n"]
    if not (0 < r < n and 0 < s < n):
        return False
    g = (c["gx"], c["gy"])
    if c is SM2:
        uid = b"1234567812345678"
        z = hashlib.new("sm3", struct.pack(">H", len(uid) * 8) + uid + b"".join(
            v.to_bytes(32, "big") for v in (c["a"], c["b"], c["gx"], c["gy"], q[0], q[1]))).digest()
        e = int.from_bytes(hashlib.new("sm3", z + message).digest(), "big")
        t = (r + s) % n
        if t == 0:
            return False
        pt = add(c, mul(c, s, g), mul(c, t, q))
        return pt is not None and (e + pt[0]) % n == r
    e = int.from_bytes(hashlib.sha256(message).digest(), "big")
    w = pow(s, -1, n)
    pt = add(c, mul(c, e * w % n, g), mul(c, r * w % n, q))
    return pt is not None and pt[0] % n == r


# --- the bundle ------------------------------------------------------------

HASH_DOMAIN = b"podkey-audit-hash-v1"
CHECKPOINT_DOMAIN = b"podkey-audit-checkpoint-v1\n"
APPROVAL_DOMAIN = b"podkey-approval-v1\n"
ALGS = {"SM3-SM2": "sm3", "SHA256-ECDSA": "sha256"}


class Tampered(Exception):
    pass


def raw_member(line, key):
    """The raw JSON text of a top-level object member, as stored."""
    i = line.find('"%s":' % key)
    if i < 0:
        return None
    i += len(key) + 3
    depth, j, in_str = 0, i, False
    while j < len(line):
        ch = line[j]
        if in_str:
            if ch == "\\":
                j += 1
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return line[i:j + 1]
        j += 1
    return None


def checkpoint_input(raw):
    """What a checkpoint signs: the domain and its JSON without "sig"."""
    unsigned, n = re.subn(r',"sig":"[A-Za-z0-9+/=]*"\}$', "}", raw)
    if n != 1:
        raise Tampered("a checkpoint without its signature")
    return CHECKPOINT_DOMAIN + unsigned.encode()


def go_json(obj):
    """Go's encoding/json text of a decoded object (key order kept)."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def check_checkpoint(cp, signed_input, keys):
    key = keys.get(cp.get("kid"))
    if key is None:
        raise Tampered("checkpoint signed by %s, a key keys.json does not hold" % cp.get("kid"))
    if public_key(key["publicKey"]) != public_key(cp.get("publicKey", "")):
        raise Tampered("checkpoint names another key than keys.json's %s" % cp["kid"])
    if not verify(key["publicKey"], signed_input, base64.b64decode(cp.get("sig", ""))):
        raise Tampered("checkpoint signature does not verify")


def load(dirname, name):
    with open(os.path.join(dirname, name), encoding="utf-8") as f:
        return json.load(f)


def verify_bundle(d, extra_checkpoints):
    manifest = load(d, "manifest.json")
    if manifest.get("format") != "podkey-evidence-v1":
        raise Tampered("not a podkey-evidence-v1 bundle")
    keys = {k["kid"]: k for k in load(d, "keys.json") or []}
    with open(os.path.join(d, "records.jsonl"), encoding="utf-8") as f:
        lines = [l.rstrip("\n") for l in f if l.strip()]
    first, last = manifest["records"]["first"], manifest["records"]["last"]
    records = []
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if rec.get("seq") != first + i:
            raise Tampered("record %d: seq %s out of place (deleted, reordered or inserted records)" % (first + i, rec.get("seq")))
        records.append(rec)
    if not records or records[-1]["seq"] != last:
        raise Tampered("the bundle ends at record %s; the manifest says %d (truncated)" % (records[-1]["seq"] if records else first - 1, last))

    # The hash's starting value.
    start = manifest["start"]
    hashes = {}
    if start["seq"] == 0:
        for alg, h in ALGS.items():
            hashes[alg] = hashlib.new(h, HASH_DOMAIN).digest()
    else:
        at = start["checkpointRecord"]
        if not first <= at <= last:
            raise Tampered("the starting checkpoint (record %d) is not in the bundle" % at)
        line = lines[at - first]
        cp = records[at - first].get("checkpoint") or {}
        check_checkpoint(cp, checkpoint_input(raw_member(line, "checkpoint")), keys)
        if (cp["seq"], cp["hash"], cp["alg"]) != (start["seq"], start["hash"], start["alg"]) or start["seq"] != first - 1:
            raise Tampered("manifest's start differs from the checkpoint at record %d" % at)
        hashes[start["alg"]] = bytes.fromhex(start["hash"])

    sums = {alg: {first - 1: h} for alg, h in hashes.items()}
    checked, covered = 0, 0
    for i, (line, rec) in enumerate(zip(lines, records)):
        seq = first + i
        cp = rec.get("checkpoint")
        if rec.get("action") == "audit.checkpoint" and cp:
            want = sums.get(cp.get("alg"), {}).get(cp.get("seq"))
            if want is None:
                raise Tampered("record %d: a checkpoint of record %s this bundle cannot recompute" % (seq, cp.get("seq")))
            if want.hex() != cp["hash"]:
                raise Tampered("records up to %d differ from what the checkpoint at record %d signed" % (cp["seq"], seq))
            check_checkpoint(cp, checkpoint_input(raw_member(line, "checkpoint")), keys)
            checked += 1
            covered = max(covered, cp["seq"])
        data = line.encode()
        for alg in list(hashes):
            h = hashlib.new(ALGS[alg], hashes[alg] + struct.pack(">Q", len(data)) + data).digest()
            hashes[alg] = h
            sums[alg][seq] = h
    period_last = manifest["period"]["lastRecord"]
    if covered < period_last:
        raise Tampered("the period ends at record %d but the newest checkpoint covers only 1..%d (records cut off the end?)" % (period_last, covered))
    for path in extra_checkpoints:
        with open(path, encoding="utf-8") as f:
            cp = json.load(f)
        if cp["seq"] > last:
            raise Tampered("%s covers records 1..%d; the bundle ends at %d (truncated)" % (path, cp["seq"], last))
        want = sums.get(cp["alg"], {}).get(cp["seq"])
        if want is not None and want.hex() != cp["hash"]:
            raise Tampered("records up to %d differ from %s" % (cp["seq"], path))
        unsigned = dict(cp)
        sig = unsigned.pop("sig", "")
        check_checkpoint(dict(cp, sig=sig), CHECKPOINT_DOMAIN + go_json(unsigned).encode(), keys)

    # Approvals against the roster.
    roster = load(d, "roster.json")
    people = {p["name"]: p for p in roster.get("people", [])}
    hashname = "sm3" if roster.get("suite") == "gm" else "sha256"
    approvals = 0
    with open(os.path.join(d, "approvals.jsonl"), encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            ap = json.loads(line)["approval"]
            signed = APPROVAL_DOMAIN + ap["request"].encode()
            if hashlib.new(hashname, signed).hexdigest() != ap["digest"]:
                raise Tampered("approval %s: the digest is not the request's" % ap["id"])
            if json.loads(ap["request"]).get("op") != ap["op"]:
                raise Tampered("approval %s: the operation is not the request's" % ap["id"])
            for s in ap["signatures"]:
                p = people.get(s["name"])
                if p is None or not verify(p["publicKey"], signed, base64.b64decode(s["sig"])):
                    raise Tampered("approval %s: %s's signature does not verify with the roster" % (ap["id"], s["name"]))
            approvals += 1
    return len(records), first, last, checked, covered, approvals


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--checkpoint", action="append", default=[], help="a checkpoint file received from keyd")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    try:
        n, first, last, checked, covered, approvals = verify_bundle(a.bundle, a.checkpoint)
    except Tampered as e:
        print("TAMPERED: %s" % e)
        return 1
    except (OSError, ValueError, KeyError, TypeError) as e:
        print("UNVERIFIABLE: %s: %s" % (type(e).__name__, e))
        return 1
    if not a.quiet:
        print("verified: records %d..%d (%d), %d signed checkpoints (the newest covers 1..%d), %d approvals with every signature" % (
            first, last, n, checked, covered, approvals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
