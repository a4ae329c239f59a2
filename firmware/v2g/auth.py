# HMAC-SHA256 (RFC 2104) on hashlib, for signed remote commands.
# MicroPython has no hmac module on every port; this is the whole of it.
import hashlib

_BLOCK = const(64)


def hmac_sha256(key, msg):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    k = bytearray(_BLOCK)
    k[: len(key)] = key
    inner = bytearray(_BLOCK)
    outer = bytearray(_BLOCK)
    for i in range(_BLOCK):
        inner[i] = k[i] ^ 0x36
        outer[i] = k[i] ^ 0x5C
    h = hashlib.sha256(inner)
    h.update(msg)
    o = hashlib.sha256(outer)
    o.update(h.digest())
    return o.digest()


def equal(a, b):
    """Compare without an early exit, so timing does not leak how many
    leading characters of a forged signature were right."""
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


def _unhex(text):
    import binascii

    return binascii.unhexlify(text)


def key_from_hex(text):
    return _unhex(text)


def verify(key, body_bytes, sig_hex):
    """True if sig_hex is the hex HMAC-SHA256 of body_bytes under key."""
    if not isinstance(sig_hex, str) or len(sig_hex) != 64:
        return False
    try:
        sig = _unhex(sig_hex)
    except ValueError:
        return False
    return equal(hmac_sha256(key, body_bytes), sig)
