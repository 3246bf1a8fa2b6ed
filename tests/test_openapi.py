"""The OpenAPI document: valid 3.1, exactly the /api/v1 routes, and true to real answers."""

from __future__ import annotations

import re

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import OpenAPIV31SpecValidator

from app.api.openapi import OPERATIONS
from app.extensions import db
from app.models import Host, Role
from app.models.types import utcnow

API = "/api/v1"


@pytest.fixture
def document(client):
    response = client.get(f"{API}/openapi.json")  # anonymous: the document is public
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def _routes(app) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(f"{API}/"):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        routes |= {(method, path) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return routes


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    errors = [error.message for error in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors == []


def test_the_document_describes_exactly_the_routes_in_the_url_map(app, document):
    described = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert described == _routes(app)


def test_every_described_operation_names_a_real_endpoint(app):
    assert set(OPERATIONS) <= set(app.view_functions), set(OPERATIONS) - set(app.view_functions)


def test_operations_carry_roles_security_and_the_error_shape(document):
    operations = [op for item in document["paths"].values() for op in item.values()]
    for operation in operations:
        assert operation["responses"]["default"] == {"$ref": "#/components/responses/Error"}
        assert operation["x-required-role"] in ("public", "viewer", "operator", "admin")
    hosts = document["paths"]["/api/v1/hosts/{host_id}/repository"]
    assert hosts["put"]["x-required-role"] == "admin"
    assert hosts["get"]["x-required-role"] == "viewer"
    jobs = document["paths"]["/api/v1/hosts/{host_id}/jobs"]["post"]
    assert jobs["x-required-role"] == "operator"
    assert {"401", "403", "404", "409", "422"} <= set(jobs["responses"])
    assert document["paths"]["/api/v1/openapi.json"]["get"]["security"] == []
    assert document["security"] == [{"bearerToken": []}, {"session": []}]
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "message"]
    path_id = jobs["parameters"][0]["schema"]
    assert (path_id["type"], path_id["maximum"]) == ("integer", 2**31 - 1)


def test_bounds_are_the_servers_own(document):
    schemas = document["components"]["schemas"]
    assert schemas["TokenInput"]["properties"]["name"]["maxLength"] == 100
    assert schemas["SourceGroupInput"]["properties"]["retry_max"]["maximum"] == 20
    restore = schemas["RestoreInput"]["properties"]
    assert restore["include"]["maxItems"] == 500
    assert schemas["Host"]["properties"]["last_successful_backup_job_id"]["type"] == [
        "integer",
        "null",
    ]
    assert "missing_paths" in schemas["JobStats"]["properties"]


# --- real answers validate against the document ----------------------------------------------


class Conformance:
    """Validates a test client's responses against the operation they answered."""

    def __init__(self, document):
        self.document = document
        self.checked: set[tuple[str, str, int]] = set()

    def schema_for(self, method: str, template: str, status: int, media_type: str):
        operation = self.document["paths"][template][method.lower()]
        response = operation["responses"].get(str(status)) or operation["responses"]["default"]
        if "$ref" in response:
            response = self.document["components"]["responses"][response["$ref"].split("/")[-1]]
        content = response.get("content")
        if content is None:
            return None
        return content[media_type]["schema"]

    def check(self, response, method: str, template: str):
        media_type = response.mimetype
        schema = self.schema_for(method, template, response.status_code, media_type)
        if schema is None:
            assert response.get_data() == b"", (method, template, response.status_code)
        elif media_type == "application/json":
            validator = Draft202012Validator(
                {**schema, "components": self.document["components"]},
                format_checker=FormatChecker(),
            )
            errors = [error.message for error in validator.iter_errors(response.get_json())]
            assert errors == [], (method, template, response.status_code, errors)
        self.checked.add((method, template, response.status_code))
        return response


@pytest.fixture
def conform(document):
    return Conformance(document)


def _online_host(hostname: str) -> Host:
    host = Host(hostname=hostname, os="linux", arch="x86_64", enrolled_at=utcnow())
    host.last_seen_at = utcnow()
    db.session.add(host)
    db.session.commit()
    return host


def test_real_answers_match_their_schemas(app, api, conform):
    admin = api(Role.admin)
    host = _online_host("web-1")
    h = f"{API}/hosts/{host.id}"

    def call(method, template, path, **kwargs):
        return conform.check(admin.open(path, method=method, **kwargs), method, template)

    call("GET", "/api/v1/me", f"{API}/me")
    call("GET", "/api/v1/hosts", f"{API}/hosts")
    call("GET", "/api/v1/hosts/{host_id}", h)
    call("GET", "/api/v1/hosts/{host_id}", f"{API}/hosts/999999")  # 404 Error
    created = call(
        "POST",
        "/api/v1/enrollment-tokens",
        f"{API}/enrollment-tokens",
        json={"repo_url": "/srv/restic/web-2", "repo_password": "pw", "paths": ["/etc"]},
    )
    assert created.status_code == 201
    token_id = created.get_json()["id"]
    one = call("GET", "/api/v1/enrollment-tokens/{token_id}", f"{API}/enrollment-tokens/{token_id}")
    assert one.get_json()["host"] is None and "token" not in one.get_json()
    call("GET", "/api/v1/enrollment-tokens", f"{API}/enrollment-tokens")
    group = call(
        "POST",
        "/api/v1/hosts/{host_id}/source-groups",
        f"{h}/source-groups",
        json={"name": "etc", "includes": ["/etc"], "retention": {"keep_daily": 7}},
    )
    assert group.status_code == 201, group.get_json()
    group_id = group.get_json()["id"]
    call("GET", "/api/v1/hosts/{host_id}/source-groups", f"{h}/source-groups")
    call(
        "POST",
        "/api/v1/hosts/{host_id}/source-groups/{group_id}/retention-preview",
        f"{h}/source-groups/{group_id}/retention-preview",
    )
    refused = call(
        "POST",
        "/api/v1/hosts/{host_id}/source-groups",
        f"{h}/source-groups",
        json={"name": "bad name", "includes": ["relative"]},
    )
    assert refused.status_code == 422 and refused.get_json()["fields"]
    schedule = call(
        "POST",
        "/api/v1/hosts/{host_id}/schedules",
        f"{h}/schedules",
        json={"name": "nightly", "cron": "30 2 * * *", "source_groups": ["etc"]},
    )
    assert schedule.status_code == 201, schedule.get_json()
    call("GET", "/api/v1/hosts/{host_id}/schedules", f"{h}/schedules")
    call(
        "PUT",
        "/api/v1/hosts/{host_id}/repo-maintenance",
        f"{h}/repo-maintenance",
        json={"forget_cron": "0 3 * * *", "check_subset_percent": 5},
    )
    call("GET", "/api/v1/hosts/{host_id}/repo-maintenance", f"{h}/repo-maintenance")
    call("PUT", "/api/v1/hosts/{host_id}/bandwidth", f"{h}/bandwidth", json={"upload_kib": 10})
    call("GET", "/api/v1/hosts/{host_id}/hooks", f"{h}/hooks")
    call(
        "PUT",
        "/api/v1/hosts/{host_id}/repository",
        f"{h}/repository",
        json={"url": "rest:https://u:secret@backup.example.com/web-1", "password": "pw"},
    )
    repository = call("GET", "/api/v1/hosts/{host_id}/repository", f"{h}/repository")
    assert "secret" not in repository.get_data(as_text=True)
    call("GET", "/api/v1/hosts/{host_id}/snapshots", f"{h}/snapshots")
    call("GET", "/api/v1/hosts/{host_id}/repo-stats", f"{h}/repo-stats")
    job = call("POST", "/api/v1/hosts/{host_id}/jobs", f"{h}/jobs", json={"kind": "stats"})
    assert job.status_code == 201, job.get_json()
    job_id = job.get_json()["id"]
    call("GET", "/api/v1/jobs", f"{API}/jobs?host_id={host.id}")
    call("GET", "/api/v1/jobs/{job_id}", f"{API}/jobs/{job_id}")
    call("POST", "/api/v1/jobs/{job_id}/cancel", f"{API}/jobs/{job_id}/cancel")
    call("GET", "/api/v1/jobs/{job_id}/log.ndjson", f"{API}/jobs/{job_id}/log.ndjson")
    token = call("POST", "/api/v1/tokens", f"{API}/tokens", json={"name": "report"})
    call("GET", "/api/v1/tokens", f"{API}/tokens")
    call("DELETE", "/api/v1/tokens/{token_id}", f"{API}/tokens/{token.get_json()['id']}")
    anonymous = app.test_client().get(f"{API}/hosts")
    conform.check(anonymous, "GET", "/api/v1/hosts")  # 401 Error
    assert len(conform.checked) >= 25
