"""Fuzzing the running gateway from its own OpenAPI document (schemathesis): every operation gets schema-valid
requests (and, with a smaller budget, schema-invalid ones); no answer is a server error (5xx) and every
answer conforms to the documented responses. Bounded: a fixed number of examples per operation and an
overall time budget, derandomized so a failure reproduces."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
import schemathesis.core
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.reliability.mesh import VisionRun, figures

POSITIVE_EXAMPLES = 70  # per operation
NEGATIVE_EXAMPLES = 25  # per operation
STATEFUL_SCENARIOS = 25  # sequences following the document's links (train/jobs -> job, models -> report)
BUDGET_S = 80.0  # all operations together; cases past it are not sent
REQUEST_TIMEOUT_S = 35.0  # the gateway's own gRPC deadline is 30 s: past this a request hangs


@dataclass
class Tally:
    cases: int = 0
    server_errors: list[str] = field(default_factory=list)
    nonconforming: list[str] = field(default_factory=list)
    per_operation: dict[str, int] = field(default_factory=dict)
    skipped_over_budget: int = 0
    unsatisfiable: list[str] = field(default_factory=list)


def _request_text(case: schemathesis.Case) -> str:
    """The request, unsanitized (as_curl_command hides values of fields named like tokens)."""
    parts = [f"path={case.path_parameters}"] if case.path_parameters else []
    parts += [f"query={case.query}"] if case.query else []
    if case.body is not None and not isinstance(case.body, schemathesis.core.NotSet):
        parts.append(f"body={case.body!r}"[:300])
    text = " ".join(parts) or "(no input)"
    return text if len(text) < 600 else text[:600] + "..."


def _fuzz(
    operation: schemathesis.APIOperation,
    mode: schemathesis.GenerationMode,
    examples: int,
    base_url: str,
    session: requests.Session,
    tally: Tally,
    deadline: float,
) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: failures are collected, not raised
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def one(case: schemathesis.Case) -> None:
        if time.monotonic() > deadline:
            tally.skipped_over_budget += 1
            return
        response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT_S)
        tally.cases += 1
        tally.per_operation[label] = tally.per_operation.get(label, 0) + 1
        if response.status_code >= 500:
            tally.server_errors.append(f"{response.status_code} {label}: {_request_text(case)}")
            return
        try:
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        except (AssertionError, FailureGroup) as exc:
            summary = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            tally.nonconforming.append(
                f"{response.status_code} {label} [{mode.value}]: {summary}: {_request_text(case)}"
            )

    try:
        one()
    except hypothesis.errors.Unsatisfiable:  # e.g. no invalid request exists for an operation without inputs
        tally.unsatisfiable.append(f"{label} [{mode.value}]")


@pytest.mark.timeout(240)
def test_fuzzed_requests_get_no_server_error_and_answers_match_the_schema(mesh: VisionRun) -> None:
    schema = schemathesis.openapi.from_url(f"{mesh.url}/openapi.json", timeout=10)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the OpenAPI document lists no operation"
    tally = Tally()
    started = time.monotonic()
    deadline = started + BUDGET_S
    with requests.Session() as session:
        for mode, examples in (
            (schemathesis.GenerationMode.POSITIVE, POSITIVE_EXAMPLES),
            (schemathesis.GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES),
        ):
            for operation in operations:
                _fuzz(operation, mode, examples, mesh.url, session, tally, deadline)
    elapsed = time.monotonic() - started
    figures(
        "fuzz",
        operations=len(operations),
        cases_run=tally.cases,
        server_errors=len(tally.server_errors),
        nonconforming=len(tally.nonconforming),
        not_sent_over_budget=tally.skipped_over_budget,
        no_cases_possible=len(tally.unsatisfiable),
        seconds=round(elapsed, 1),
    )
    for label, count in sorted(tally.per_operation.items()):
        print(f"  {count:4d} cases  {label}")
    for line in tally.unsatisfiable:
        print(f"  no case could be generated for {line}")
    for line in tally.server_errors[:20]:
        print("  SERVER ERROR", line)
    for line in tally.nonconforming[:20]:
        print("  NONCONFORMING", line)
    assert tally.cases > 0
    assert mesh.proc is not None and mesh.proc.poll() is None, "vision run died while fuzzed"
    assert not tally.server_errors, f"{len(tally.server_errors)} server errors:\n" + "\n".join(
        tally.server_errors[:20]
    )
    assert not tally.nonconforming, f"{len(tally.nonconforming)} answers off the schema:\n" + "\n".join(
        tally.nonconforming[:20]
    )


@pytest.mark.timeout(240)
def test_fuzzed_sequences_following_the_links_get_no_server_error(mesh: VisionRun) -> None:
    """Stateful: schemathesis chains operations through the OpenAPI links (a listed or created job's id into
    GET /jobs/{id}, its events and its cancel; a listed model into its report), so calls reach real jobs
    and models, not only ids that do not exist."""
    schema = schemathesis.openapi.from_url(f"{mesh.url}/openapi.json", timeout=10)
    calls: list[str] = []
    failures: list[str] = []

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def call(self, case: schemathesis.Case, **kwargs: object) -> requests.Response:
            return case.call(base_url=mesh.url, timeout=REQUEST_TIMEOUT_S)

        def validate_response(
            self, response: requests.Response, case: schemathesis.Case, **_: object
        ) -> None:
            calls.append(f"{case.operation.method.upper()} {case.operation.path}")
            if response.status_code >= 500:
                failures.append(f"{response.status_code} {calls[-1]}: {_request_text(case)}")
                return
            try:
                case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
            except (AssertionError, FailureGroup) as exc:
                failures.append(f"{response.status_code} {calls[-1]}: {str(exc).strip()[:200]}")

    Workflow.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=6,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
    )
    linked = [c for c in calls if "{" in c]
    figures("stateful fuzz", calls=len(calls), to_linked_operations=len(linked), failures=len(failures))
    assert calls and linked, "no sequence followed a link"
    assert not failures, "\n".join(failures[:20])
