"""The OpenAPI document of this server, built once at app start from its settings.

FastAPI's document describes the spec models as written; this module makes it describe *this* server:

- each error response only in ``application/problem+json`` (as served), whatever the route's own
  media type;
- the CDP_MAX_* bounds as ``maximum`` of the fields they bound (count, steps, epochs, ...);
- the ``dataset`` field of every spec lists only the data sets this server can load (the built-ins whose
  files are under CDP_DATA_ROOT), built by :func:`dataset_schema`, the one place that says what a dataset
  reference may be;
- the request examples are ones a fresh server accepts (no models, no jobs yet: a classifier training job),
  and the fields that name something which must exist say so;
- the artifact download lists every media type it serves (:data:`ARTIFACT_MEDIA_TYPES`).

Rules between fields that JSON Schema can state are in the document as ``if`` / ``then`` (which fields a
kind of training takes, the arch_options of each architecture); those it cannot (arm names unique and
``reference`` one of them, a guidance window's order, devices at most batch_size) are written in the
descriptions. The server answers a request that breaks either kind with a 422 whose ``errors[].type`` is
``cross_field``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI

from api import problems
from core import specs
from core.jobs.service import available_datasets
from core.settings import Settings

# What an artifact is served as, by the end of its name; everything else is application/octet-stream.
ARTIFACT_MEDIA_TYPES = {".json": "application/json", ".png": "image/png", ".html": "text/html"}
OCTET_STREAM = "application/octet-stream"


def artifact_media_type(name: str) -> str:
    """The media type an artifact is served with (one of the types the document declares)."""
    dot = name.rfind(".")
    return ARTIFACT_MEDIA_TYPES.get(name[dot:].lower(), OCTET_STREAM) if dot >= 0 else OCTET_STREAM


def artifact_content() -> dict[str, Any]:
    """The 200 content of the artifact download: every type :func:`artifact_media_type` answers."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {media: dict(binary) for media in (OCTET_STREAM, *ARTIFACT_MEDIA_TYPES.values())}


def dataset_schema(available: Sequence[str]) -> dict[str, Any]:
    """The JSON Schema of a spec's ``dataset`` field on a server that can load ``available``: one of those
    built-ins, or ``ds:<id>`` of a data set the caller's team uploaded (an absent or foreign one: 404)."""
    from core.specs.common import DATASET_REF_PATTERN

    return {"anyOf": [{"type": "string", "enum": list(available)},
                      {"type": "string", "pattern": rf"^{DATASET_REF_PATTERN}$"}],
            "title": "Dataset",
            "description": "a data set this server has (built-ins whose files are present: "
                           f"{', '.join(available)}), or `ds:<id>` of one your team uploaded "
                           "(POST /datasets; an absent one is a 404)"}


# Request examples that a fresh server (no models, no finished jobs) accepts, by schema name.
FRESH_EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "TrainSpec": [{"kind": "classifier", "dataset": "digits", "epochs": 2},
                  {"kind": "diffusion", "dataset": "digits", "epochs": 2}],
    "ExperimentSpec": [{"dataset": "digits", "seeds": [0], "arms": [{"name": "real only"}],
                        "trades": {"epochs": 1}, "evaluation": {"attacks": ["pgd_ce"], "limit": 100}}],
}
# Specs that name models or jobs which must exist first: what their example needs.
NEEDS_MODELS = ("`model` and `classifier` name finished training jobs (`job:<id>` of a diffusion and a "
                "classifier job of yours, e.g. from `POST /jobs/train`) or models in the server's model "
                "directory, or `model:<id>` of a registered model; an absent one is a 404, one of the wrong "
                "kind or a job that failed a 409, and an unfinished job makes this one wait for it.")
NEEDS_MODEL = ("`model` names a classifier or TRADES training job (`job:<id>`), a registered model "
               "(`model:<id>`) or a model in the server's model directory; an absent one is a 404, a failed "
               "job a 409, and an unfinished one makes this job wait for it.")
CROSS_FIELD = {
    "GenerateSpec": "`guidance_window` is [lo, hi] with lo <= hi.",
    "TrainSpec": "`synthetic` and `oracle` only with kind `trades` (`oracle` only on mnist5k / mnist5k16), "
                 "`class_conditional` only with kind `diffusion`; `arch_options` takes width, feature_dim "
                 "for `small_cnn` and depth (6n + 4, at least 10), widen_factor (at most 32) for `wrn`; "
                 "`devices` at most `batch_size`.",
    "ExperimentSpec": "arm names are unique and `reference` is one of them; `trades.arch_options` as in "
                      "TrainSpec.",
}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, made to describe this server (see the module docstring); built once."""
    if app.openapi_schema is None:
        document = FastAPI.openapi(app)
        for item in document["paths"].values():
            for operation in item.values():
                responses = operation.get("responses", {})
                for status, response in list(responses.items()):
                    content = response.get("content", {})
                    if status[0] in "45" and problems.PROBLEM_JSON in content:
                        # FastAPI also lists the route's own media type (JSON, an event stream)
                        for media in [m for m in content if m != problems.PROBLEM_JSON]:
                            del content[media]
                    elif status == "422":  # FastAPI's default for a route that cannot answer 422
                        del responses[status]
        schemas = document.get("components", {}).get("schemas", {})
        settings: Settings = app.state.settings
        _document_server_limits(schemas, settings)
        _document_datasets(schemas, available_datasets(settings.data_root))
        _document_examples(schemas)
        _document_rules(schemas, available_datasets(settings.data_root))
        text = json.dumps(document["paths"])
        for unused in ("HTTPValidationError", "ValidationError"):
            if f"#/components/schemas/{unused}" not in text:
                schemas.pop(unused, None)
        app.openapi_schema = document
    return app.openapi_schema


def _document_server_limits(schemas: dict[str, Any], settings: Settings) -> None:
    """The CDP_MAX_* bounds of this server as ``maximum`` of the fields they bound (count, steps, ...)."""
    for schema in schemas.values():
        for name, prop in schema.get("properties", {}).items():
            setting = specs.SERVER_LIMITS.get(name)
            if setting is None:
                continue
            for branch in prop.get("anyOf", [prop]):
                if branch.get("type") in ("integer", "number"):
                    branch["maximum"] = getattr(settings, setting)


def _document_datasets(schemas: dict[str, Any], available: Sequence[str]) -> None:
    for schema in schemas.values():
        properties = schema.get("properties", {})
        current = properties.get("dataset")
        if current is None:
            continue
        branches = current.get("anyOf", [current])  # a built-in name, or a built-in name or ds:<id>
        if any("enum" in branch for branch in branches):
            properties["dataset"] = dataset_schema(available)


def arch_rule() -> dict[str, Any]:
    """Which arch_options each architecture takes (core.specs.train.ARCH_OPTIONS) as JSON Schema."""
    depths = list(range(10, 4097, 6))  # a WRN depth is 6n + 4, n >= 1, within arch_options' bound
    return {"if": {"required": ["arch"], "properties": {"arch": {"const": "wrn"}}},
            "then": {"properties": {"arch_options": {
                "propertyNames": {"enum": sorted(specs.ARCH_OPTIONS["wrn"])},
                "properties": {"depth": {"enum": depths}, "widen_factor": {"maximum": 32}}}}},
            "else": {"properties": {"arch_options": {
                "propertyNames": {"enum": sorted(specs.ARCH_OPTIONS["small_cnn"])}}}}}


def train_rules(available: Sequence[str]) -> list[dict[str, Any]]:
    """TrainSpec's rules between fields that JSON Schema can state (``if`` / ``then``)."""
    oracle_sets = [name for name in ("mnist5k", "mnist5k16") if name in available]
    oracle: dict[str, Any] = ({"if": {"required": ["oracle"], "properties": {"oracle": {"const": True}}},
                               "then": {"properties": {"dataset": {"enum": oracle_sets}}}}
                              if oracle_sets else {"properties": {"oracle": {"const": False}}})
    # devices <= batch_size stays a cross_field rule: an if / then per devices value is more than
    # schemathesis' generator takes
    return [
        {"if": {"properties": {"kind": {"const": "trades"}}},
         "else": {"properties": {"synthetic": {"maxItems": 0}, "oracle": {"const": False}}}},
        {"if": {"properties": {"kind": {"const": "diffusion"}}},
         "else": {"properties": {"class_conditional": {"const": False}}}},
        oracle, arch_rule()]


def _document_rules(schemas: dict[str, Any], available: Sequence[str]) -> None:
    if "TrainSpec" in schemas:
        schemas["TrainSpec"]["allOf"] = train_rules(available)
    if "ExperimentTrades" in schemas:
        schemas["ExperimentTrades"]["allOf"] = [arch_rule()]


def _document_examples(schemas: dict[str, Any]) -> None:
    for name, examples in FRESH_EXAMPLES.items():
        if name in schemas:
            schemas[name]["examples"] = examples
    notes = {"GenerateSpec": NEEDS_MODELS, "EvaluateSpec": NEEDS_MODEL}
    for name, schema in schemas.items():
        extra = " ".join(part for part in (notes.get(name), CROSS_FIELD.get(name)) if part)
        if extra:
            schema["description"] = f"{schema.get('description', '').strip()}\n\n{extra}".strip()
