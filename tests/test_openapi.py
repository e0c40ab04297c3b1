"""Schemathesis against /openapi.json: generated requests never get a 5xx or a response the schema does not describe."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 12


def test_every_operation_conforms_to_the_schema(job_app):
    # No admin token on purpose: admin routes must answer their documented 401, and no job is started.
    schema = schemathesis.openapi.from_wsgi("/openapi.json", job_app)
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def conforms(case) -> None:
            case.call_and_validate(checks=CHECKS)

        conforms()
        tested.append(operation.label)
    assert len(tested) >= 18 and "POST /predict" in tested
