#!/usr/bin/env python3
"""podkey request signing, version 2: a reference signer in Python.

Standard library only (hashlib's SM3 comes from OpenSSL 3). It signs an
HTTP request with a pod's API key as docs/request-signing.md describes and
sends it, or prints the string to sign and the Authorization header.

    podkey_sign.py --key /var/run/podkey/ledger-api.json \\
        --method POST --url http://ledger:8080/v1/transfers \\
        --header 'Content-Type: application/json' --sign-header content-type \\
        --data '{"amount":100}'

The request-target is sent exactly as given in --url (path and query as
written, nothing re-encoded), and that is what is signed. Header values
are sent as UTF-8 and signed as the bytes sent (docs/request-signing.md,
"Header values are octets"). User information in --url (user:pw@) is
never sent as the Host.
"""
import argparse
import base64
import hashlib
import hmac
import http.client
import json
import secrets
import sys
import time
import urllib.parse

VERSION = "PODKEY2"
ALGORITHMS = {"intl": (VERSION + "-HMAC-SHA256", "sha256"), "gm": (VERSION + "-HMAC-SM3", "sm3")}
ALWAYS_SIGNED = ("host", "x-podkey-date", "x-podkey-nonce")


def wire(value):
    """A header value as it is sent: UTF-8 octets."""
    return value if isinstance(value, bytes) else value.encode("utf-8")


def string_to_sign(suite, date, nonce, method, target, headers, signed, body):
    """The string to sign, as bytes. headers is a list of (name, value)
    field lines in the order they are sent; signed the lower-case names,
    sorted. Each signed value is taken as the octets sent."""
    alg, hash_name = ALGORITHMS[suite]
    lines = [wire(x) for x in (alg, date, nonce, method, target)]
    for name in signed:
        values = [wire(v).strip(b" \t") for (n, v) in headers if n.lower() == name]
        if not values:
            raise ValueError("signed header %r is absent" % name)
        lines += [name.encode("ascii") + b":" + v for v in values]
    lines.append(";".join(signed).encode("ascii"))
    lines.append(hashlib.new(hash_name, body).hexdigest().encode("ascii"))
    return b"\n".join(lines)


def sign(suite, key_id, secret, method, target, host, headers, body, extra_signed=(), date=None, nonce=None):
    """Returns the field lines to send (with Host, the date, the nonce and
    the Authorization header added) and the string to sign."""
    date = date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    nonce = nonce or base64.urlsafe_b64encode(secrets.token_bytes(18)).decode().rstrip("=")
    lines = [("Host", host)] + list(headers) + [("X-Podkey-Date", date), ("X-Podkey-Nonce", nonce)]
    signed = sorted({n.lower().strip() for n in ALWAYS_SIGNED + tuple(extra_signed)} - {"", "authorization"})
    sts = string_to_sign(suite, date, nonce, method, target, lines, signed, body)
    alg, hash_name = ALGORITHMS[suite]
    signature = hmac.new(secret, sts, hash_name).hexdigest()
    auth = "%s Credential=%s, SignedHeaders=%s, Signature=%s" % (alg, key_id, ";".join(signed), signature)
    return lines + [("Authorization", auth)], sts


def load_key(path):
    with open(path) as f:
        k = json.load(f)
    secret = base64.urlsafe_b64decode(k["secretKey"] + "=" * (-len(k["secretKey"]) % 4))
    return k["accessKeyId"], secret, k.get("suite", "intl")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--key", required=True, help="the apiKey object's JSON file")
    p.add_argument("--method", default="GET")
    p.add_argument("--url", required=True)
    p.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable; repeated names are sent as separate lines)")
    p.add_argument("--sign-header", action="append", default=[], help="also sign this header (repeatable)")
    p.add_argument("--data", default="", help="the request body")
    p.add_argument("--date", help="signing time YYYYMMDDTHHMMSSZ (default now; for test vectors)")
    p.add_argument("--nonce", help="nonce (default random; for test vectors)")
    p.add_argument("--print", action="store_true", help="print the string to sign and the Authorization header; send nothing")
    a = p.parse_args()
    key_id, secret, suite = load_key(a.key)
    u = urllib.parse.urlsplit(a.url)
    target = (u.path or "/") + ("?" + u.query if u.query or a.url.endswith("?") else "")
    # The host and port alone: netloc would carry user:pw@ into Host.
    host = u.hostname if ":" not in (u.hostname or "") else "[%s]" % u.hostname
    if u.port is not None:
        host += ":%d" % u.port
    headers = [tuple(x.strip() for x in h.split(":", 1)) for h in a.header]
    body = a.data.encode()
    lines, sts = sign(suite, key_id, secret, a.method, target, host, headers, body, a.sign_header, a.date, a.nonce)
    if a.print:
        sys.stdout.write(sts.decode("utf-8") + "\n" + dict(lines)["Authorization"] + "\n")
        return 0
    conn = (http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection)(u.hostname, u.port, timeout=10)
    conn.putrequest(a.method, target, skip_host=True, skip_accept_encoding=True)
    for name, value in lines:
        conn.putheader(name, wire(value))  # bytes: sent as they are, not as Latin-1
    if body:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body or None)
    resp = conn.getresponse()
    sys.stdout.write("%d %s\n" % (resp.status, resp.read().decode().strip()))
    return 0 if resp.status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
