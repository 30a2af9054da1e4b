"""schemathesis hooks for scripts/test-fuzz (loaded by tests/fuzz/schemathesis.toml).

Three answers of the API reject a request that is valid by the OpenAPI document on its own, because
the rule is one JSON Schema cannot state (it spans two requests, or two fields of one); all are
documented in shared/openapi.json. schemathesis' `positive_data_acceptance` check would count them
as schema-valid data rejected. Rather than accept every 400 of the two operations (which would hide
any drift between the document's schemas and the server's validation there), the built-in check is
disabled for exactly those operations in the config, and `positive_data_acceptance_stateful`
below runs it in its place, excusing a 400 only when it is the documented answer *and* the request
really is that case:

- POST /api/licenses/sessions: an idempotencyKey already used by another user of the same license
  and feature (400 invalid_request, field idempotencyKey). Excused only when this run earlier
  created a session with that license key, feature and idempotencyKey for a different userId.
- PUT /api/licenses/{licenseId}: a feature whose heartbeatIntervalSeconds exceeds its
  leaseTtlSeconds (given, or the default SEATKEEPER_LEASE_TTL_SECONDS, 90): 400 invalid_request
  naming that feature's heartbeatIntervalSeconds. Excused only when the body has such a feature.
- GET (and HEAD) /api/licenses/{licenseId}/usage: a window whose `from` is not before its `to`, or
  that makes more than 10,000 steps of `stepSeconds` (defaults: `to` now, `from` 24 hours before
  `to`, steps of 3600 s): 400 invalid_request. Excused only when the query really is such a window.
"""

import datetime
import json
import math
import os
import threading
import time
import urllib.parse

import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance

CREATE = "POST /api/licenses/sessions"
PUT_LICENSE = "PUT /api/licenses/{licenseId}"
USAGE = "GET /api/licenses/{licenseId}/usage"
USAGE_HEAD = "HEAD /api/licenses/{licenseId}/usage"

# (license key, feature, idempotencyKey) -> the userIds the run created sessions for with it.
_idempotency_users: dict[tuple[str, str, str], set[str]] = {}
_lock = threading.Lock()


def _body(prepared) -> dict:
    raw = prepared.body
    if raw is None:
        return {}
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _error(response) -> dict:
    try:
        value = response.json()
    except Exception:
        return {}
    err = value.get("error") if isinstance(value, dict) else None
    return err if isinstance(err, dict) else {}


def _idempotency_slot(response):
    body = _body(response.request)
    key, feature, idem = response.request.headers.get("Authorization", ""), body.get("feature"), body.get("idempotencyKey")
    if not all(isinstance(v, str) for v in (feature, idem)):
        return None, body
    return (key, feature, idem), body


def _idempotency_conflict(response) -> bool:
    err = _error(response)
    if err.get("code") != "invalid_request" or err.get("field") != "idempotencyKey":
        return False
    slot, body = _idempotency_slot(response)
    with _lock:
        users = _idempotency_users.get(slot, set()) if slot else set()
    return bool(users - {body.get("userId")})


def _number(value) -> bool:
    # 90 or 90.0: JSON (and the server) do not tell them apart.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _heartbeat_over_lease(response) -> bool:
    err = _error(response)
    field = str(err.get("field", ""))
    if err.get("code") != "invalid_request" or not field.endswith(".heartbeatIntervalSeconds"):
        return False
    default_ttl = int(os.environ.get("SEATKEEPER_LEASE_TTL_SECONDS") or 90)
    features = _body(response.request).get("features")
    for policy in (features or {}).values() if isinstance(features, dict) else ():
        if not isinstance(policy, dict):
            continue
        hb, ttl = policy.get("heartbeatIntervalSeconds"), policy.get("leaseTtlSeconds")
        ttl = default_ttl if ttl is None else ttl
        if _number(hb) and _number(ttl) and hb > ttl:
            return True
    return False


def _ms(text):
    try:
        t = datetime.datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
    except ValueError:
        return None
    if t.tzinfo is None:
        return None
    return math.floor(t.timestamp() * 1000)


def _usage_window_refused(response) -> bool:
    err = _error(response)
    if err and (err.get("code") != "invalid_request" or err.get("field") not in ("from", "stepSeconds")):
        return False
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(response.request.url).query))
    to = _ms(query["to"]) if "to" in query else math.floor(time.time() * 1000)
    start = _ms(query["from"]) if "from" in query else (to - 86_400_000 if to is not None else None)
    try:
        step = int(query.get("stepSeconds", "3600"))
    except ValueError:
        return False
    if to is None or start is None or not 60 <= step <= 316_224_000:
        return False
    return start >= to or math.ceil((to - start) / (step * 1000)) > 10_000


EXCUSED = {
    CREATE: _idempotency_conflict,
    PUT_LICENSE: _heartbeat_over_lease,
    USAGE: _usage_window_refused,
    USAGE_HEAD: _usage_window_refused,
}


@schemathesis.check
def positive_data_acceptance_stateful(ctx, response, case):
    """`positive_data_acceptance`, for the two operations the config disables it on, minus their
    documented state- and cross-field-dependent 400s."""
    excused = EXCUSED.get(case.operation.label)
    if excused is None:
        return None
    if case.operation.label == CREATE and response.status_code in (200, 201):
        slot, body = _idempotency_slot(response)
        if slot and isinstance(body.get("userId"), str):
            with _lock:
                _idempotency_users.setdefault(slot, set()).add(body["userId"])
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        if response.status_code == 400 and excused(response):
            return None
        raise
