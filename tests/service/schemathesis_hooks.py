"""Schemathesis hooks of this project (``SCHEMATHESIS_HOOKS=tests.service.schemathesis_hooks``).

One hook, for what JSON Schema cannot state. It drops the failure "schema-valid request rejected" (ST202)
only when the reply is a 422 problem document every one of whose ``errors[]`` is a rejection the OpenAPI
document announces in words:

- ``cross_field``: a rule *between* fields (arm names unique and ``reference`` one of them, a guidance
  window's order, which fields a kind of training takes); see core.specs.common.cross_field;
- ``idempotency_conflict``: an ``Idempotency-Key`` reused with a different body (the 422 the IETF
  Idempotency-Key draft prescribes): whether a key was used before is the server's state, not the shape of
  the request;
- ``invalid-upload``: the bytes of an uploaded file (a data set's npz or zip, a model archive, a classifier's
  JSON config) do not parse or validate: a file format, which JSON Schema describes only as binary; the
  upload routes' descriptions list what is checked;
- ``int_type`` on a number sent with a fraction (``2.0``): JSON Schema counts 2.0 as an integer; this API
  takes integers written as integers only (strict input, stated in the document's description).

Any other rejection of schema-valid data, and every other check, still fails the run.
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis

STATEFUL_RULES = frozenset({"cross_field", "idempotency_conflict", "invalid-upload"})


def _at(body: Any, field: str) -> Any:
    """The value at an error's field path (``body.arms.0.name``) in the request body, or None."""
    value = body
    for part in field.split(".")[1:]:
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _announced(error: Any, request_body: Any) -> bool:
    if not isinstance(error, dict):
        return False
    if error.get("type") in STATEFUL_RULES:
        return True
    sent = _at(request_body, str(error.get("field", "")))
    return error.get("type") == "int_type" and isinstance(sent, float) and sent.is_integer()


def is_documented_rejection(status: int, body: bytes | None, request_body: Any = None) -> bool:
    """A 422 problem document all of whose field errors are rejections the document announces."""
    if status != 422 or not body:
        return False
    try:
        errors = json.loads(body).get("errors") or []
    except (ValueError, AttributeError):
        return False
    return bool(errors) and all(_announced(error, request_body) for error in errors)


def _note_dropped(operation: str, body: bytes) -> None:
    """With CDP_SCHEMATHESIS_DROPPED=<file>: one JSON line per dropped failure (what the hook accepted)."""
    path = os.environ.get("CDP_SCHEMATHESIS_DROPPED")
    if path:
        errors = json.loads(body).get("errors") or []
        with open(path, "a") as out:
            out.write(json.dumps({"operation": operation, "errors": errors}) + "\n")


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    if getattr(failure, "code", None) != "ST202":
        return True
    if is_documented_rejection(response.status_code, response.content, getattr(case, "body", None)):
        _note_dropped(str(getattr(failure, "operation", "")), response.content)
        return False
    return True
