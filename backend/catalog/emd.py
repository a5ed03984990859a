"""Discover models deployed with AWS Easy Model Deployer (EMD) from their CloudFormation stacks.

We read CloudFormation directly instead of depending on the ``easy-model-deployer`` package.
Facts below are taken from the EMD sources (github.com/aws-samples/easy-model-deployer):

Stack naming (``src/emd/models/model.py`` ``Model.get_model_stack_name_prefix``,
``src/emd/constants.py``, ``src/emd/models/utils/text_utilities.py`` ``normalize``):
    ``EMD-Model-<normalize(model_id[-tag]).lower()>``. The tag is appended only when it is not the
    default tag ``dev``. ``normalize`` turns ``_`` and ``.`` into ``-``, drops a leading non-letter and
    every character outside ``[-a-zA-Z0-9]``. So ``Qwen2.5-0.5B-Instruct``/``dev`` becomes
    ``EMD-Model-qwen2-5-0-5b-instruct``. The mapping loses information, so model id and tag are read
    from the stack Parameters, never parsed back from the name. The shared environment stack is
    ``EMD-Env-<version>``, which the ``EMD-Model-`` prefix leaves out.

Stack Parameters (``src/emd/cfn/ecs/template.yaml``, ``src/emd/cfn/sagemaker_realtime/template.yaml``;
the values come from the pipeline variables set in ``src/emd/sdk/deploy.py``):
    ``ModelId``, ``ModelTag`` (default ``dev``), ``InstanceType``, ``EngineType`` (vllm, tgi, ...),
    ``ServiceType`` (``sagemaker_realtime``, ``sagemaker_async``, ``ecs``, ``ec2``, ...), ``FrameWorkType``
    (note the capital W; e.g. ``fastapi``), ``Region``; the ECS stacks also have ``DNSName`` and a
    ``NoEcho`` ``APIKey``.

Stack Outputs:
    ECS: ``Model`` = ``<ModelId>/<ModelTag>``, ``BaseURL`` = ``http://<DNSName>`` (the shared ALB in
    front of the OpenAI-compatible router), ``ECSServiceConnect``.
    SageMaker real-time: ``Model`` and ``SageMakerEndpointName`` (older versions only output
    ``ModelId``). These have no ``BaseURL`` of their own.

``emd status`` (``src/emd/commands/status.py``, ``src/emd/sdk/status.py``, ``get_model_stacks`` in
``src/emd/utils/aws_service_utils.py``):
    lists stacks whose name starts with ``EMD-Model`` in CREATE_COMPLETE / UPDATE_COMPLETE /
    ROLLBACK_COMPLETE / DELETE_IN_PROGRESS. It takes model_id/tag from the ``ModelId``/``ModelTag``
    Parameters, status from ``StackStatus``, and prints ``<model_id>/<model_tag>``. It shows a single
    "Base URL", which is the ``BaseURL`` output of the first stack that has one, plus ``/v1``.

Router (``src/emd/cfn/shared/openai_router/main.go``, ``docs/en/api.md``):
    clients call ``<BaseURL>/v1/chat/completions`` (also ``/v1/models``, ``/v1/embeddings``,
    ``/v1/rerank``, ``/v1/invocations``) with ``"model": "<model_id>/<tag>"``. A bare ``<model_id>`` is
    read as ``<model_id>/dev``. The router removes the tag before it forwards the request. It only
    routes to ``EMD-Model-*`` stacks in CREATE_COMPLETE or UPDATE_COMPLETE that have a ``Model``
    output, through ``SageMakerEndpointName`` or ``ECSServiceConnect``. API keys are optional and set
    per model. They are stored as a ``{"<model_id>/<tag>": key}`` JSON object in the Secrets Manager
    secret ``EMD-APIKey-Secrets``. When a model has a key, the router expects
    ``Authorization: Bearer <key>``; otherwise no key is checked.

Because the router only routes to CREATE_COMPLETE and UPDATE_COMPLETE stacks, ``ready`` uses the
same two statuses.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)

logger = logging.getLogger(__name__)

MODEL_STACK_PREFIX = "EMD-Model-"
DEFAULT_TAG = "dev"
READY_STATUSES = frozenset({"CREATE_COMPLETE", "UPDATE_COMPLETE"})

CLIENT_CONFIG = Config(retries={"total_max_attempts": 2}, connect_timeout=2, read_timeout=5)

_ACCESS_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})
_BAD_CREDENTIAL_CODES = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
    }
)

ClientFactory = Callable[[str, Config], Any]
"""Builds a CloudFormation client from ``(region, config)``. It exists so tests can inject a client."""


def emd_stack_name(model_id: str, tag: str = DEFAULT_TAG) -> str:
    """Return the stack name EMD gives a deployment (see the module docstring)."""
    raw = model_id if not tag or tag == DEFAULT_TAG else f"{model_id}-{tag}"
    raw = raw.replace("_", "-").replace(".", "-")
    kept = [ch for i, ch in enumerate(raw) if (ch.isalpha() if i == 0 else ch.isalnum() or ch == "-")]
    return f"{MODEL_STACK_PREFIX}{''.join(kept).lower()}"


@dataclass(frozen=True)
class EmdDeployment:
    model_id: str
    tag: str
    stack_name: str
    status: str
    ready: bool
    instance_type: str | None
    engine_type: str | None
    service_type: str | None
    framework_type: str | None
    base_url: str | None
    model: str
    created_at: datetime | None

    @property
    def key(self) -> str:
        """Catalogue key, e.g. ``emd-qwen2.5-7b-instruct-dev``."""
        return re.sub(r"[^a-z0-9.-]", "-", f"emd-{self.model_id}-{self.tag}".lower())

    @property
    def openai_base_url(self) -> str | None:
        """Base URL to give an OpenAI client: the router's ``BaseURL`` plus ``/v1``."""
        return f"{self.base_url.rstrip('/')}/v1" if self.base_url else None


@dataclass(frozen=True)
class Discovery:
    deployments: tuple[EmdDeployment, ...]
    error: str | None
    checked_at: float


class EmdDiscovery:
    """Lists EMD deployments in one region and caches the result for ``ttl_s`` seconds.

    ``get()`` never raises for AWS, credential or network problems; those come back as
    ``Discovery.error``. Failures are cached too, so that a page load does not keep calling AWS.
    """

    def __init__(
        self,
        region: str,
        ttl_s: float,
        client_factory: ClientFactory | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.region = region
        self.ttl_s = ttl_s
        self._client_factory = client_factory
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: Discovery | None = None
        self._cached_at = 0.0

    def get(self) -> Discovery:
        # Callers wait on the lock while one of them refreshes, so a cold cache leads to one AWS
        # call rather than one call per concurrent request.
        with self._lock:
            now = self._clock()
            if self._cached is not None and self.ttl_s > 0 and now - self._cached_at < self.ttl_s:
                return self._cached
            result = self._discover()
            self._cached, self._cached_at = result, self._clock()
            return result

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def find(self, model_id: str, tag: str) -> EmdDeployment | None:
        for deployment in self.get().deployments:
            if deployment.model_id == model_id and deployment.tag == tag:
                return deployment
        return None

    def _discover(self) -> Discovery:
        try:
            stacks = list(self._describe_emd_stacks())
        except NoCredentialsError:
            return self._failure("no AWS credentials (set a profile, environment variables or a role)")
        except (PartialCredentialsError, ProfileNotFound) as exc:
            return self._failure(f"no AWS credentials ({exc})")
        except ClientError as exc:
            return self._failure(_describe_client_error(exc))
        except BotoCoreError as exc:
            return self._failure(f"CloudFormation unreachable: {exc}")
        return Discovery(deployments=parse_stacks(stacks), error=None, checked_at=time.time())

    def _describe_emd_stacks(self) -> Iterable[Mapping[str, Any]]:
        if self._client_factory is not None:
            client = self._client_factory(self.region, CLIENT_CONFIG)
        else:
            session = boto3.session.Session(region_name=self.region)
            # Checking first avoids a slow failing call and gives a clear message.
            if session.get_credentials() is None:
                raise NoCredentialsError()
            client = session.client("cloudformation", config=CLIENT_CONFIG)
        for page in client.get_paginator("describe_stacks").paginate():
            for stack in page.get("Stacks", []):
                if stack.get("StackName", "").startswith(MODEL_STACK_PREFIX):
                    yield stack

    def _failure(self, reason: str) -> Discovery:
        logger.warning("EMD discovery in %s failed: %s", self.region, reason)
        return Discovery(deployments=(), error=reason, checked_at=time.time())


def _describe_client_error(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    code = error.get("Code", "Unknown")
    detail = f"{code}: {error.get('Message', '')}".rstrip(": ")
    if code in _ACCESS_DENIED_CODES:
        return f"no permission to list CloudFormation stacks ({detail})"
    if code in _BAD_CREDENTIAL_CODES:
        return f"AWS credentials were rejected ({detail})"
    return f"CloudFormation error ({detail})"


def parse_stacks(stacks: Iterable[Mapping[str, Any]]) -> tuple[EmdDeployment, ...]:
    """Turn ``describe_stacks`` entries into deployments, sorted by model id and tag.

    Stacks without a ``BaseURL`` output (SageMaker) are reached through the same shared router, so,
    like ``emd status``, they get the first ``BaseURL`` that any EMD stack reports.
    """
    parsed = [d for d in (_parse_stack(s) for s in stacks) if d is not None]
    shared_base_url = next((d.base_url for d in parsed if d.base_url), None)
    deployments = [
        d if d.base_url or shared_base_url is None else replace(d, base_url=shared_base_url) for d in parsed
    ]
    return tuple(sorted(deployments, key=lambda d: (d.model_id.lower(), d.tag, d.stack_name)))


def _parse_stack(stack: Mapping[str, Any]) -> EmdDeployment | None:
    status = stack.get("StackStatus", "")
    if status == "DELETE_COMPLETE":
        return None
    params = {p["ParameterKey"]: p.get("ParameterValue") for p in stack.get("Parameters") or []}
    outputs = {o["OutputKey"]: o.get("OutputValue") for o in stack.get("Outputs") or []}

    model_id = params.get("ModelId") or None
    tag = params.get("ModelTag") or DEFAULT_TAG
    model_output = outputs.get("Model") or None
    if model_id is None and model_output and "/" in model_output:
        model_id, tag = model_output.split("/", 1)
    if not model_id:
        logger.info("Skipping stack %s: no ModelId parameter", stack.get("StackName"))
        return None

    return EmdDeployment(
        model_id=model_id,
        tag=tag,
        stack_name=stack["StackName"],
        status=status,
        ready=status in READY_STATUSES,
        instance_type=params.get("InstanceType") or None,
        engine_type=params.get("EngineType") or None,
        service_type=params.get("ServiceType") or None,
        framework_type=params.get("FrameWorkType") or None,
        base_url=outputs.get("BaseURL") or None,
        model=model_output or f"{model_id}/{tag}",
        created_at=stack.get("CreationTime"),
    )
