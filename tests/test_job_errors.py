"""The job layer's errors (core/jobs/errors.py: one tree, one root) and the per-kind tables of the /jobs
routes; no Redis, no server."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest
from fastapi.exceptions import RequestValidationError

from api.problems import ProblemError
from api.routes import jobs as job_routes
from core.jobs import errors
from core.specs import JobKind

ROOT = Path(__file__).resolve().parents[1]


def test_every_error_of_the_job_layer_derives_from_its_root() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    assert all(issubclass(cls, errors.JobsError) for cls in classes)
    assert len(classes) == 13
    # a builtin base that callers catch it by is part of the contract
    assert issubclass(errors.JobNotFound, KeyError) and issubclass(errors.EntryNotFound, LookupError)
    for cls in (errors.InvalidReference, errors.IdempotencyConflict, errors.PipelineInvalid):
        assert issubclass(cls, ValueError)
    assert issubclass(errors.IdempotencyBusy, RuntimeError)
    assert issubclass(errors.DependencyUnavailable, RuntimeError)


def test_no_module_of_the_job_layer_defines_an_error_of_its_own() -> None:
    """New errors of core/jobs go into errors.py, under JobsError."""
    found = []
    for path in sorted((ROOT / "core" / "jobs").glob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(base, ast.Name) and base.id.endswith(("Error", "Exception", "KeyError"))
                    for base in node.bases):
                found.append(f"{path.name}: {node.name}")
    assert found == []


def test_every_module_imports_the_job_layers_errors_from_errors_py() -> None:
    """One import place: an error of the job layer is imported from core.jobs.errors, never re-exported."""
    names = set(errors.__all__)
    found = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        if ".venv" in path.parts or path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("core.jobs.") \
                    and node.module != "core.jobs.errors":
                found += [f"{path.relative_to(ROOT)}: {a.name} from {node.module}" for a in node.names
                          if a.name in names]
    assert not found


@pytest.mark.parametrize("table", ["SUBMISSIONS", "TYPED_METRICS"])
def test_every_job_kind_has_an_entry_in_each_per_kind_table(table: str) -> None:
    assert set(getattr(job_routes, table)) == set(get_args(JobKind))


def test_a_table_without_an_entry_for_a_kind_fails_naming_it() -> None:
    table = dict(job_routes.TYPED_METRICS)
    del table["evaluate"]
    with pytest.raises(RuntimeError, match=r"T: no entry for the job kinds \['evaluate'\]"):
        job_routes.for_every_kind(table, "T")
    with pytest.raises(RuntimeError, match="not job kinds"):
        job_routes.for_every_kind({**job_routes.TYPED_METRICS, "nope": None}, "T")


def test_each_kinds_submission_route_is_registered_from_the_table() -> None:
    posts = {route.path: route for route in job_routes.router.routes if "POST" in route.methods}
    for kind, submission in job_routes.SUBMISSIONS.items():
        route = posts[f"/jobs/{kind}"]
        assert (route.operation_id, route.summary, route.status_code, route.name) == (
            submission.operation_id, submission.summary, 202, f"create_{kind}_job")
        assert route.body_field.field_info.annotation is submission.spec


@pytest.mark.parametrize(("error", "status", "slug", "headers"), [
    (errors.QuotaExceeded("images_per_day", "too many", retry_after_s=60), 429, "quota-images-per-day",
     {"Retry-After": "60"}),
    (errors.IdempotencyBusy("busy"), 409, "idempotency-in-progress", {"Retry-After": "1"}),
    (errors.IdempotencyConflict("other body"), 422, "idempotency-conflict", None),
    (errors.InvalidReference(("model",), "model: nope", status=404), 404, "reference-not-found", None),
    (errors.InvalidReference(("synthetic", 0), "not done", status=409), 409, "reference-not-usable", None),
    (errors.InvalidReference(("dataset",), "no such data set"), 422, "invalid-reference", None),
])
def test_each_refused_submission_is_answered_by_its_entry_of_the_table(error, status, slug, headers) -> None:
    assert isinstance(error, job_routes.SUBMIT_ERROR_TYPES)
    problem = job_routes.submit_problem(error)
    assert isinstance(problem, ProblemError)
    assert (problem.status, problem.slug, problem.headers) == (status, slug, headers)
    if isinstance(error, errors.InvalidReference):
        assert problem.errors[0].field == "body." + ".".join(map(str, error.loc))
    if isinstance(error, errors.IdempotencyConflict):
        assert problem.errors[0].field == "header.Idempotency-Key"


def test_a_pipeline_whose_steps_do_not_validate_is_a_validation_error_at_the_steps_paths() -> None:
    invalid = errors.PipelineInvalid([{"loc": ("steps", 0, "spec", "count"), "msg": "too big", "type": "x"}])
    problem = job_routes.submit_problem(invalid)
    assert isinstance(problem, RequestValidationError)
    assert problem.errors()[0]["loc"] == ("body", "steps", 0, "spec", "count")


def test_every_kind_of_registry_entry_has_its_not_found_problem() -> None:
    from api.routes import uploads
    from core.jobs.registry import Kind

    assert set(uploads.NOT_FOUND) == set(get_args(Kind))
    problem = uploads.not_found("models", "ab" * 12)
    assert (problem.status, problem.slug, problem.detail) == (404, "model-not-found", "no model " + "ab" * 12)
