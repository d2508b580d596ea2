"""Property-based checks of the live service against its own OpenAPI document (schemathesis):
generated requests, valid and invalid, to every operation of a server on 127.0.0.1; no 5xx,
and every answer's status, content type and body as the document says."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import stub_server_env
from tools.loopback import serving

pytestmark = pytest.mark.slow

EXAMPLES = 40  # per operation and mode: the suite stays well under a minute
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live_schema(settings):
    env = stub_server_env(settings, PFVIT_LOG_LEVEL="warning")
    with serving(env) as url:
        yield schemathesis.openapi.from_url(url + "/openapi.json")


def _operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_the_service_keeps_the_contract(live_schema, mode):
    operations = _operations(live_schema)
    assert {op.path for op in operations} >= {
        "/v1/recognize",
        "/v1/poker-face",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not (len(operation.query) or len(operation.body)):
            continue  # nothing to get wrong in a request without parameters or body

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def keeps_the_contract(case) -> None:
            case.call_and_validate(checks=CHECKS, timeout=30)

        keeps_the_contract()
