"""The sandbox's check of a Tencent REST call: its query string and UserSig, as Tencent does.

The UserSig is verified by running the TLSSigAPIv2 algorithm in reverse with the app's key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import zlib


class Reject(Exception):
    """A Tencent error answer (HTTP 200, ActionStatus FAIL)."""

    def __init__(self, code: int, info: str) -> None:
        super().__init__(info)
        self.code, self.info = code, info


def verify_usersig(sig: str, key: str, sdkappid: int, identifier: str,
                   now: float | None = None) -> None:
    """Raise Reject unless `sig` is a valid, unexpired UserSig of `identifier` for our app."""
    try:
        raw = sig.replace("*", "+").replace("-", "/").replace("_", "=")
        doc = json.loads(zlib.decompress(base64.b64decode(raw)))
        sig_id, sig_app = str(doc["TLS.identifier"]), int(doc["TLS.sdkappid"])
        t, expire, mac = int(doc["TLS.time"]), int(doc["TLS.expire"]), str(doc["TLS.sig"])
    except Exception:
        raise Reject(70003, "usersig invalid: cannot decode") from None
    if sig_app != sdkappid:
        raise Reject(70003, "usersig invalid: sdkappid mismatch")
    content = (f"TLS.identifier:{sig_id}\nTLS.sdkappid:{sig_app}\n"
               f"TLS.time:{t}\nTLS.expire:{expire}\n")
    want = base64.b64encode(hmac.new(key.encode(), content.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(want.decode(), mac):
        raise Reject(70009, "usersig verification failed: key mismatch")
    if sig_id != identifier:
        raise Reject(70013, "usersig identifier mismatch")
    if t + expire < (now if now is not None else time.time()):
        raise Reject(70001, "usersig expired")


def check_query(query: dict[str, list[str]], sdkappid: int, key: str, admin_id: str) -> None:
    """Raise Reject unless the query string is a signed call of the app's admin."""
    q = {k: v[0] for k, v in query.items()}
    for name in ("sdkappid", "identifier", "usersig", "random", "contenttype"):
        if not q.get(name):
            raise Reject(100002, f"missing query parameter {name}")
    if q["sdkappid"] != str(sdkappid):
        raise Reject(100002, "sdkappid does not match")
    try:
        rnd = int(q["random"])
    except ValueError:
        raise Reject(100002, "random must be an integer") from None
    if not 0 <= rnd < 2**32:
        raise Reject(100002, "random must be a 32-bit unsigned integer")
    if q["contenttype"] != "json":
        raise Reject(100002, "contenttype must be json")
    verify_usersig(q["usersig"], key, sdkappid, q["identifier"])
    if q["identifier"] != admin_id:
        raise Reject(70013, "identifier is not the app admin")
