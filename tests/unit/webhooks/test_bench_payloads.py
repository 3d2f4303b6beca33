"""The benchmark's payloads are reviews the example policy admits (bench/payloads.py).

The benchmarks measure the common path, an admitted review, and refuse to run otherwise; a rule
that starts refusing a payload (as the build-pod rule did the recorded pod's empty RUN_IMAGE)
fails here rather than in the next benchmark.
"""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from bench import payloads


@pytest.mark.parametrize("name", sorted(payloads.PAYLOADS))
def test_every_payload_is_admitted_by_the_example_policy(client: FlaskClient, name: str) -> None:
    make, path = payloads.PAYLOADS[name]
    review = make()

    answer = client.post(path, json=review)

    assert answer.status_code == 200
    response = answer.get_json()["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"], response.get("status")
