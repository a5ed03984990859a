from __future__ import annotations

import threading

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber
from moto import mock_aws

from backend.catalog.emd import (
    CLIENT_CONFIG,
    EmdDiscovery,
    emd_stack_name,
)
from tests.support.emd_stacks import (
    ALB_DNS,
    ECS_TEMPLATE,
    REGION,
    SAGEMAKER_TEMPLATE,
    UNRELATED_TEMPLATE,
    create_emd_stack,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def isolated_aws_env(monkeypatch, tmp_path):
    """Keep this machine's AWS profile, credentials and instance metadata out of the tests."""
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_CLOUDFORMATION",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "missing-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "missing-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def cfn(isolated_aws_env, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.client("cloudformation", region_name=REGION)


def stubbed_client_factory(calls: list[str], *, error_code: str, message: str, status: int):
    def factory(region: str, config: Config):
        calls.append(region)
        client = boto3.client(
            "cloudformation",
            region_name=region,
            config=config,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        stubber = Stubber(client)
        stubber.add_client_error(
            "describe_stacks", service_error_code=error_code, service_message=message, http_status_code=status
        )
        stubber.activate()
        return client

    return factory


def test_stack_name_follows_emd_normalisation():
    # The SageMaker endpoint name in EMD's docs/en/api.md is "EMD-Model-qwen2-5-0-5b-instruct-endpoint".
    assert emd_stack_name("Qwen2.5-0.5B-Instruct", "dev") == "EMD-Model-qwen2-5-0-5b-instruct"
    assert emd_stack_name("DeepSeek-R1-Distill-Qwen-1.5B", "bench_1") == (
        "EMD-Model-deepseek-r1-distill-qwen-1-5b-bench-1"
    )


def test_lists_emd_stacks_and_ignores_others(cfn):
    create_emd_stack(
        cfn, ECS_TEMPLATE, "Qwen2.5-7B-Instruct", "dev",
        InstanceType="g5.2xlarge", EngineType="vllm", ServiceType="ecs", DNSName=ALB_DNS,
    )  # fmt: skip
    create_emd_stack(
        cfn, SAGEMAKER_TEMPLATE, "DeepSeek-R1-Distill-Qwen-1.5B", "bench_1",
        InstanceType="ml.g5.xlarge", EngineType="tgi", ServiceType="sagemaker_realtime",
    )  # fmt: skip
    cfn.create_stack(StackName="EMD-Env-1-0-0", TemplateBody=UNRELATED_TEMPLATE)
    cfn.create_stack(StackName="my-other-app", TemplateBody=UNRELATED_TEMPLATE)

    result = EmdDiscovery(REGION, ttl_s=60).get()

    assert result.error is None
    assert [d.model for d in result.deployments] == [
        "DeepSeek-R1-Distill-Qwen-1.5B/bench_1",
        "Qwen2.5-7B-Instruct/dev",
    ]
    sagemaker, ecs = result.deployments

    assert ecs.model_id == "Qwen2.5-7B-Instruct"
    assert ecs.tag == "dev"
    assert ecs.stack_name == "EMD-Model-qwen2-5-7b-instruct"
    assert ecs.status == "CREATE_COMPLETE"
    assert ecs.ready is True
    assert (ecs.instance_type, ecs.engine_type, ecs.service_type, ecs.framework_type) == (
        "g5.2xlarge", "vllm", "ecs", "fastapi",
    )  # fmt: skip
    assert ecs.base_url == f"http://{ALB_DNS}"
    assert ecs.openai_base_url == f"http://{ALB_DNS}/v1"
    assert ecs.key == "emd-qwen2.5-7b-instruct-dev"
    assert ecs.created_at is not None

    assert sagemaker.model_id == "DeepSeek-R1-Distill-Qwen-1.5B"
    assert sagemaker.tag == "bench_1"
    assert sagemaker.stack_name == "EMD-Model-deepseek-r1-distill-qwen-1-5b-bench-1"
    assert sagemaker.ready is True
    assert (sagemaker.instance_type, sagemaker.engine_type, sagemaker.service_type) == (
        "ml.g5.xlarge", "tgi", "sagemaker_realtime",
    )  # fmt: skip
    # No BaseURL output of its own: EMD routes it through the shared router, as `emd status` shows.
    assert sagemaker.base_url == f"http://{ALB_DNS}"
    assert sagemaker.key == "emd-deepseek-r1-distill-qwen-1.5b-bench-1"


def test_find_by_model_id_and_tag(cfn):
    create_emd_stack(cfn, ECS_TEMPLATE, "Qwen2.5-7B-Instruct", "dev", DNSName=ALB_DNS)
    create_emd_stack(cfn, ECS_TEMPLATE, "Qwen2.5-7B-Instruct", "v2", DNSName=ALB_DNS)
    discovery = EmdDiscovery(REGION, ttl_s=60)

    found = discovery.find("Qwen2.5-7B-Instruct", "v2")

    assert found is not None
    assert found.stack_name == "EMD-Model-qwen2-5-7b-instruct-v2"
    assert found.model == "Qwen2.5-7B-Instruct/v2"
    assert discovery.find("Qwen2.5-7B-Instruct", "v3") is None


def test_result_is_cached_until_ttl_passes(cfn):
    clock = FakeClock()
    discovery = EmdDiscovery(REGION, ttl_s=30, clock=clock)
    create_emd_stack(cfn, ECS_TEMPLATE, "Qwen2.5-7B-Instruct", "dev", DNSName=ALB_DNS)
    first = discovery.get()
    assert len(first.deployments) == 1

    create_emd_stack(cfn, ECS_TEMPLATE, "Qwen3-8B", "dev", DNSName=ALB_DNS)
    clock.now += 29
    assert discovery.get() is first

    clock.now += 2
    refreshed = discovery.get()
    assert [d.model_id for d in refreshed.deployments] == ["Qwen2.5-7B-Instruct", "Qwen3-8B"]
    assert refreshed.checked_at >= first.checked_at


def test_invalidate_forces_a_refresh(cfn):
    discovery = EmdDiscovery(REGION, ttl_s=3600, clock=FakeClock())
    assert discovery.get().deployments == ()
    create_emd_stack(cfn, ECS_TEMPLATE, "Qwen3-8B", "dev", DNSName=ALB_DNS)
    discovery.invalidate()
    assert len(discovery.get().deployments) == 1


def test_zero_ttl_does_not_cache(cfn):
    discovery = EmdDiscovery(REGION, ttl_s=0, clock=FakeClock())
    assert discovery.get().deployments == ()
    create_emd_stack(cfn, ECS_TEMPLATE, "Qwen3-8B", "dev", DNSName=ALB_DNS)
    assert len(discovery.get().deployments) == 1


def test_no_credentials_is_reported_not_raised(isolated_aws_env):
    result = EmdDiscovery(REGION, ttl_s=60).get()

    assert result.deployments == ()
    assert result.error is not None
    assert "credentials" in result.error


def test_access_denied_is_reported_and_cached(isolated_aws_env):
    calls: list[str] = []
    factory = stubbed_client_factory(
        calls,
        error_code="AccessDenied",
        message="User: arn:aws:iam::123456789012:user/dev is not authorized to perform: "
        "cloudformation:DescribeStacks",
        status=403,
    )
    clock = FakeClock()
    discovery = EmdDiscovery(REGION, ttl_s=30, client_factory=factory, clock=clock)

    result = discovery.get()

    assert result.deployments == ()
    assert result.error is not None
    assert result.error.startswith("no permission to list CloudFormation stacks (AccessDenied:")
    assert "cloudformation:DescribeStacks" in result.error
    # A failure is cached like a success, so a page load does not call AWS again.
    assert discovery.get() is result
    assert calls == [REGION]
    clock.now += 31
    discovery.get()
    assert calls == [REGION, REGION]


def test_rejected_credentials_are_reported(isolated_aws_env):
    factory = stubbed_client_factory(
        [], error_code="ExpiredToken", message="The security token included in the request is expired",
        status=403,
    )  # fmt: skip
    result = EmdDiscovery(REGION, ttl_s=0, client_factory=factory).get()
    assert result.error is not None
    assert "credentials" in result.error
    assert "ExpiredToken" in result.error


def test_unreachable_endpoint_is_reported(isolated_aws_env):
    def factory(region: str, config: Config):
        return boto3.client(
            "cloudformation",
            region_name=region,
            config=config,
            endpoint_url="http://127.0.0.1:9",  # the discard port: nothing listens here
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    result = EmdDiscovery(REGION, ttl_s=0, client_factory=factory).get()

    assert result.deployments == ()
    assert result.error is not None
    assert result.error.startswith("CloudFormation unreachable:")


def test_concurrent_callers_share_one_refresh(isolated_aws_env):
    calls: list[str] = []
    gate = threading.Event()
    inner = stubbed_client_factory(calls, error_code="AccessDenied", message="denied", status=403)

    def slow_factory(region: str, config: Config):
        gate.wait(timeout=5)
        return inner(region, config)

    discovery = EmdDiscovery(REGION, ttl_s=60, client_factory=slow_factory)
    results = []
    threads = [threading.Thread(target=lambda: results.append(discovery.get())) for _ in range(8)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(timeout=10)

    assert len(results) == 8
    assert calls == [REGION]
    assert all(r is results[0] for r in results)


def test_client_config_bounds_retries_and_timeouts():
    assert CLIENT_CONFIG.retries["total_max_attempts"] == 2
    assert CLIENT_CONFIG.connect_timeout == 2
    assert CLIENT_CONFIG.read_timeout == 5
