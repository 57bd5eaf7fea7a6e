#!/usr/bin/env python3
"""Sign a message for a shared wasm-jobs queue (HMAC-SHA256, format v1).

Usage: sign_message.py KEY_FILE BODY TENANT EXPIRES [NAME=VALUE ...]

KEY_FILE holds the shared key (mode 600; one trailing newline is not part of
the key), EXPIRES is the expiry in Unix seconds, and each NAME=VALUE adds a
String attribute. Prints {"body": ..., "attributes": {name: {"type": "String"
or "Number", "value": ...}}} with the tenant, wasm-jobs.expires and
wasm-jobs.signature attributes added. As a module:
sign(key: bytes, body: str, attributes: dict, expires: int) -> dict returns
that object; attribute values are str (String) or {"type", "value"} dicts.
The canonical encoding is documented in src/signing.rs.
"""
import errno, hashlib, hmac, json, os, struct, sys

TYPES = {"String": b"S", "Number": b"N"}

def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data

def sign(key: bytes, body: str, attributes: dict, expires: int) -> dict:
    attrs = {k: v if isinstance(v, dict) else {"type": "String", "value": v}
             for k, v in attributes.items() if k != "wasm-jobs.signature"}
    attrs["wasm-jobs.expires"] = {"type": "Number", "value": str(int(expires))}
    msg = b"wasm-jobs-signature-v1\n" + _lp(body.encode()) + struct.pack(">I", len(attrs))
    for name in sorted(attrs, key=lambda n: n.encode()):
        a = attrs[name]
        msg += _lp(name.encode()) + TYPES[a["type"]] + _lp(a["value"].encode())
    mac = hmac.new(key, msg, hashlib.sha256).hexdigest()
    attrs["wasm-jobs.signature"] = {"type": "String", "value": "v1=" + mac}
    return {"body": body, "attributes": attrs}

def load_key(path: str) -> bytes:
    try:  # O_NOFOLLOW: a symlink fails with ELOOP
        f = open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW))
    except OSError as e:
        why = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror
        sys.exit(f"cannot open key file {path}: {why}")
    with f:
        if os.fstat(f.fileno()).st_mode & 0o077:
            sys.exit(f"key file {path} is accessible by group or others; run: chmod 600 {path}")
        key = f.read()
    key = key[:-2] if key.endswith(b"\r\n") else key[:-1] if key.endswith(b"\n") else key
    if len(key) < 16:
        sys.exit(f"the key in {path} is {len(key)} bytes long; a signing key needs at least 16")
    return key

if __name__ == "__main__":
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    key_file, body, tenant, expires = sys.argv[1:5]
    extra = dict(arg.split("=", 1) for arg in sys.argv[5:])
    print(json.dumps(sign(load_key(key_file), body, {**extra, "tenant": tenant}, int(expires))))
