#!/usr/bin/env python3
"""Verify a podkey token (ES256, suite intl) against podkey's JWK Set.

A reference for receivers in any language, written with the `cryptography`
package only: find the key the token's "kid" names, check the ES256
signature (r||s, 32 bytes each) over the JWS signing input, then issuer,
audience and expiry. Prints the claims as JSON on success; exits 1 with
the reason otherwise.

    podkey_verify_token.py JWKS_FILE AUDIENCE < token
"""
import base64
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


def verify(jwks, token, audience, issuer="podkey", leeway=30):
    header_b64, claims_b64, sig_b64 = token.split(".")
    header = json.loads(b64url(header_b64))
    if header.get("alg") != "ES256":
        raise ValueError("not an ES256 token: %r" % header.get("alg"))
    if "crit" in header:
        raise ValueError("critical header extensions are not supported")
    keys = [k for k in jwks["keys"] if k.get("kid") == header.get("kid")]
    if len(keys) != 1:
        raise ValueError("no key for kid %r" % header.get("kid"))
    k = keys[0]
    if (k["kty"], k["crv"], k["alg"]) != ("EC", "P-256", "ES256"):
        raise ValueError("key %r is not an ES256 key" % k["kid"])
    pub = ec.EllipticCurvePublicNumbers(
        int.from_bytes(b64url(k["x"]), "big"), int.from_bytes(b64url(k["y"]), "big"), ec.SECP256R1()
    ).public_key()
    sig = b64url(sig_b64)
    if len(sig) != 64:
        raise ValueError("signature is not r||s")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        pub.verify(der, (header_b64 + "." + claims_b64).encode(), ec.ECDSA(hashes.SHA256()))
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
