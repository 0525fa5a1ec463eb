"""Datadog Synthetics as a gate: the configured tests run against pre-prod.

Triggers the tests through the CI endpoint with their start URL pointed at pre-prod
(`start_url`, a template, `{base_url}` by default), then polls the batch until Datadog has
a verdict or `timeout` passes. Failing tests are named with links to their results. Keys
come from DD_API_KEY and DD_APP_KEY; DD_SITE (or `site`) picks the Datadog site and `host`
points the client elsewhere (a proxy, or a test server).
"""

from __future__ import annotations

from typing import Any, Literal

import urllib3
from datadog_api_client import ApiClient, Configuration
from datadog_api_client.exceptions import ApiException, ApiTypeError, ApiValueError
from datadog_api_client.v1.api.synthetics_api import SyntheticsApi
from datadog_api_client.v1.model.synthetics_ci_batch_metadata import SyntheticsCIBatchMetadata
from datadog_api_client.v1.model.synthetics_ci_batch_metadata_git import (
    SyntheticsCIBatchMetadataGit,
)
from datadog_api_client.v1.model.synthetics_ci_test import SyntheticsCITest
from datadog_api_client.v1.model.synthetics_ci_test_body import SyntheticsCITestBody
from pydantic import Field, field_validator

from gates.support import (
    Backoff,
    GateError,
    GuardedGate,
    check_status,
    check_template,
    poll,
    render,
    require_shape,
)
from shiptypes import (
    GateResult,
    Link,
    PreprodTarget,
    ProviderConfig,
    ReleaseRef,
    Seconds,
)

VENDOR = "Datadog"
KEYS = ("DD_API_KEY", "DD_APP_KEY")


class DatadogSyntheticsConfig(ProviderConfig):
    type: Literal["datadog_synthetics"]
    name: str = "synthetics"
    public_ids: list[str] = Field(min_length=1, description="the tests to run, e.g. abc-def-ghi")
    start_url: str = Field("{base_url}", description="where the tests start; placeholders")
    locations: list[str] = Field(default_factory=list, description="empty: the tests' own")
    site: str | None = Field(None, description="Datadog site; default DD_SITE or datadoghq.com")
    host: str | None = Field(None, description="API base URL, overriding the site")
    timeout: Seconds = Field(600.0, gt=0, description="deadline for the batch to finish")
    interval: Seconds = Field(5.0, gt=0, description="first wait between polls; doubles")
    max_interval: Seconds = Field(30.0, gt=0)
    max_errors: int = Field(3, ge=0, le=100,
                            description="network errors and 5xx in a row tolerated")
    request_timeout: float = Field(10.0, gt=0, le=600, description="real seconds for one API call")

    @field_validator("start_url")
    @classmethod
    def _known_placeholders(cls, start_url: str) -> str:
        return check_template(start_url)


class DatadogSyntheticsGate(GuardedGate[DatadogSyntheticsConfig]):
    def secret_names(self) -> tuple[str, ...]:
        return KEYS

    @property
    def _site(self) -> str:
        return self.config.site or self._context.env.get("DD_SITE") or "datadoghq.com"

    def check(self, release: ReleaseRef, target: PreprodTarget) -> GateResult:
        if not target.base_url:
            raise GateError(f"pre-prod target {target.name} has no URL for the tests to start at")
        missing = [k for k in KEYS if not self._context.env.get(k)]
        if missing:
            raise GateError(f"{' and '.join(missing)} not set: cannot run Datadog Synthetics")
        config = self.config
        backoff = Backoff(config.interval, config.max_interval, config.max_errors)
        with ApiClient(self._configuration()) as client:
            api = SyntheticsApi(client)
            batch_id = _call(lambda: self._trigger(api, release, target))
            return poll(self._context.clock, config.timeout, backoff,
                        f"Datadog Synthetics batch {batch_id}",
                        lambda: self._verdict(_call(lambda: api.get_synthetics_ci_batch(batch_id)),
                                              batch_id))

    def _configuration(self) -> Configuration:
        host = {"host": self.config.host} if self.config.host else {}
        configuration = Configuration(**host)
        configuration.server_variables["site"] = self._site
        configuration.api_key["apiKeyAuth"] = self._context.env["DD_API_KEY"]
        configuration.api_key["appKeyAuth"] = self._context.env["DD_APP_KEY"]
        configuration.request_timeout = self.config.request_timeout
        # No silent retries below the gate: `poll` counts and bounds them.
        configuration.retry_policy = urllib3.util.Retry(total=0, raise_on_status=False)
        return configuration

    def _trigger(self, api: SyntheticsApi, release: ReleaseRef, target: PreprodTarget) -> str:
        start_url = render(self.config.start_url, release, target, shell=False)
        git = SyntheticsCIBatchMetadataGit(commit_sha=release.sha)
        metadata = SyntheticsCIBatchMetadata(git=git)
        extra = {"locations": self.config.locations} if self.config.locations else {}
        tests = [SyntheticsCITest(public_id=public_id, start_url=start_url, metadata=metadata,
                                  **extra) for public_id in self.config.public_ids]
        answer = api.trigger_ci_tests(body=SyntheticsCITestBody(tests=tests))
        batch_id = answer.get("batch_id")
        require_shape(isinstance(batch_id, str) and bool(batch_id), VENDOR,
                      "no batch id for the triggered tests")
        return batch_id

    def _verdict(self, batch: Any, batch_id: str) -> GateResult | str:
        data = batch.get("data")
        status = _text(data.get("status") if data is not None else None)
        require_shape(status is not None, VENDOR, f"batch {batch_id} has no status")
        results = data.get("results") or []
        batch_link = Link("Synthetics batch", f"{self._app_url}/synthetics/explorer/ci?"
                                              f"batchResultId={batch_id}")
        if status == "passed":
            return GateResult(self.name, True, f"{len(results)} Datadog Synthetics results "
                              "passed", links=(batch_link,))
        if status == "failed":
            return self._failed(results, batch_link)
        if status == "skipped":
            raise GateError("Datadog skipped every test (paused or deleted?): nothing was checked")
        running = sum(1 for r in results if _text(r.get("status")) not in ("passed", "failed"))
        return f"{running or 'all'} of {len(results) or len(self.config.public_ids)} still running"

    def _failed(self, results: list[Any], batch_link: Link) -> GateResult:
        failing = [r for r in results if _text(r.get("status")) == "failed"]
        blocking = [r for r in failing if _text(r.get("execution_rule")) != "non_blocking"]
        shown = blocking or failing
        named = ", ".join(f"{_title(r)} ({r.get('location') or 'no location'})" for r in shown)
        links = tuple(Link(_title(r), f"{self._app_url}/synthetics/details/"
                                      f"{r.get('test_public_id')}/result/{r.get('result_id')}")
                      for r in shown if r.get("test_public_id") and r.get("result_id"))
        summary = f"Datadog Synthetics failed: {named or 'no failing result listed'}"
        return GateResult(self.name, False, summary, links=(*links, batch_link))

    @property
    def _app_url(self) -> str:
        return f"https://app.{self._site}"


def _call(request: Any) -> Any:
    """One Datadog API call, its failures turned into GateErrors that say why."""
    try:
        return request()
    except ApiException as error:
        check_status(VENDOR, int(error.status or 0), error.headers)
        raise GateError(f"Datadog answered HTTP {error.status}") from None
    except (ApiTypeError, ApiValueError) as error:
        raise GateError(f"{VENDOR} sent a malformed answer: {str(error)[:200]}") from None
    except urllib3.exceptions.HTTPError as error:
        raise GateError(f"cannot reach Datadog: {type(error).__name__}", transient=True) from None


def _text(value: Any) -> str | None:
    """An enum of the client (which keeps values it does not know) or a plain string."""
    value = getattr(value, "value", value)
    return value if isinstance(value, str) else None


def _title(result: Any) -> str:
    return str(result.get("test_name") or result.get("test_public_id") or "a test")
