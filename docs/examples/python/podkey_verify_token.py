#!/usr/bin/env python3
"""Verify a podkey token (ES256, suite intl; SM2SM3, suite gm) against
podkey's JWK Set.

A reference for receivers in any language, written with the `cryptography`
package and the standard library only: find the key the token's "kid"
names, check the signature (r||s, 32 bytes each) over the JWS signing
input, then issuer, audience and expiry. ES256 is ECDSA P-256 with SHA-256;
SM2SM3 is the SM2 signature of GB/T 32918.2 with SM3 and the default
signer ID "1234567812345678", written out below since `cryptography` has
no SM2 (SM3 comes from hashlib, that is, OpenSSL). Prints the claims as
JSON on success; exits 1 with the reason otherwise.

    podkey_verify_token.py JWKS_FILE AUDIENCE < token
"""
import base64
import hashlib
import json
import sys
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64url(s):
    """Unpadded base64url in its one canonical spelling, as podkey writes it."""
    raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != s:
        raise ValueError("not canonical base64url")
    return raw


# The SM2 curve (GB/T 32918.5).
SM2_P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
SM2_A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
SM2_B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
SM2_N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
SM2_G = (0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7,
         0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0)
SM2_DEFAULT_ID = b"1234567812345678"


def _add(p1, p2):
    """Affine point addition on the SM2 curve; None is the point at infinity."""
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % SM2_P == 0:
        return None
    if p1 == p2:
        lam = (3 * x1 * x1 + SM2_A) * pow(2 * y1, -1, SM2_P) % SM2_P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, SM2_P) % SM2_P
    x3 = (lam * lam - x1 - x2) % SM2_P
    return x3, (lam * (x1 - x3) - y1) % SM2_P


def _mul(k, point):
    result = None
    while k:
        if k & 1:
            result = _add(result, point)
        point = _add(point, point)
        k >>= 1
    return result


def sm2_verify(x, y, message, r, s, uid=SM2_DEFAULT_ID):
    """GB/T 32918.2 verification of (r, s) over message by the key (x, y)."""
    if (y * y - x * x * x - SM2_A * x - SM2_B) % SM2_P != 0:
        return False
    if not (1 <= r < SM2_N and 1 <= s < SM2_N):
        return False
    b32 = lambda v: v.to_bytes(32, "big")
    z = hashlib.new("sm3", len(uid * 8).to_bytes(2, "big") + uid + b32(SM2_A) + b32(SM2_B)
                    + b32(SM2_G[0]) + b32(SM2_G[1]) + b32(x) + b32(y)).digest()
    e = int.from_bytes(hashlib.new("sm3", z + message).digest(), "big")
    t = (r + s) % SM2_N
    if t == 0:
        return False
    point = _add(_mul(s, SM2_G), _mul(t, (x, y)))
    return point is not None and (e + point[0]) % SM2_N == r


def verify(jwks, token, audience, issuer="podkey", leeway=30):
    header_b64, claims_b64, sig_b64 = token.split(".")
    header = json.loads(b64url(header_b64))
    alg = header.get("alg")
    if alg not in ("ES256", "SM2SM3"):
        raise ValueError("not an ES256 or SM2SM3 token: %r" % alg)
    if "crit" in header:
        raise ValueError("critical header extensions are not supported")
    keys = [k for k in jwks["keys"] if k.get("kid") == header.get("kid")]
    if len(keys) != 1:
        raise ValueError("no key for kid %r" % header.get("kid"))
    k = keys[0]
    crv = {"ES256": "P-256", "SM2SM3": "SM2"}[alg]
    if (k["kty"], k["crv"], k["alg"]) != ("EC", crv, alg):
        raise ValueError("key %r is not an %s key" % (k["kid"], alg))
    x, y = int.from_bytes(b64url(k["x"]), "big"), int.from_bytes(b64url(k["y"]), "big")
    sig = b64url(sig_b64)
    if len(sig) != 64:
        raise ValueError("signature is not r||s")
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    signed = (header_b64 + "." + claims_b64).encode()
    if alg == "SM2SM3":
        if not sm2_verify(x, y, signed, r, s):
            raise ValueError("signature does not verify")
    else:
        pub = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        try:
            pub.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise ValueError("signature does not verify")
    claims = json.loads(b64url(claims_b64))
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    now = time.time()
    if claims.get("iss") != issuer:
        raise ValueError("issuer %r" % claims.get("iss"))
    if audience not in auds:
        raise ValueError("audience %r not in %r" % (audience, auds))
    if now > claims["exp"] + leeway or now + leeway < claims["nbf"]:
        raise ValueError("outside its validity")
    return claims


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        jwks = json.load(f)
    try:
        print(json.dumps(verify(jwks, sys.stdin.read().strip(), sys.argv[2])))
    except (ValueError, KeyError) as e:
        print("refused: %s" % e, file=sys.stderr)
        sys.exit(1)
