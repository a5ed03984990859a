"""An evalscope model API that evaluates Amazon Bedrock models through our Converse code.

Registered with evalscope's ``register_model_api`` as ``pep_bedrock`` when imported (the entry module
``backend.evaluations.evalscope_entry`` imports it, and adds the name to ``--eval-type``'s choices). A cell
selects it with ``--eval-type=pep_bedrock --model=<model id> --api-url=bedrock://<region>``.

Each sample is one ``converse`` call built by ``backend.providers.bedrock.converse_params`` (the same
message format the playground and the stress plugin send), through the provider's cached boto3 client
(one attempt: evalscope's own retries apply). ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` and boto3's credential
chain apply as for the provider. A failure raises the provider's categorised error (``auth: ...``,
``throttled: ...``), which evalscope records against the sample.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from evalscope.api.messages import ChatMessage
from evalscope.api.model import GenerateConfig, ModelAPI, ModelOutput
from evalscope.api.model.model_output import ModelUsage
from evalscope.api.registry import register_model_api

from backend.providers.base import ChatRequest, Message, Target
from backend.providers.bedrock import _client_for, converse_params, provider_error

EVAL_TYPE = "pep_bedrock"
URL_SCHEME = "bedrock"
_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "max_tokens",
                 "content_filtered": "content_filter", "guardrail_intervened": "content_filter"}


def region_from_url(url: str | None) -> str | None:
    """The region of ``bedrock://<region>``; ``None`` (boto3's default chain) when it names none."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme != URL_SCHEME:
        raise ValueError(f"not a bedrock:// URL: {url!r}")
    return parts.netloc or None


def chat_request(messages: list[ChatMessage], config: GenerateConfig) -> ChatRequest:
    """Our neutral request from evalscope's messages: system messages joined into Converse's system field,
    consecutive turns of one role merged (Converse wants them alternating)."""
    system = [m.text for m in messages if m.role == "system" and m.text]
    turns: list[Message] = []
    for message in messages:
        if message.role not in ("user", "assistant"):
            continue
        if turns and turns[-1].role == message.role:
            turns[-1] = Message(message.role, turns[-1].text + "\n\n" + message.text)
        else:
            turns.append(Message(message.role, message.text))
    timeout = float(config.timeout) if config.timeout else 120.0
    return ChatRequest(messages=tuple(turns), system="\n\n".join(system) or None,
                       max_tokens=int(config.max_tokens or 1024), temperature=config.temperature,
                       stream=False, connect_timeout_s=min(timeout, 10.0), read_timeout_s=timeout)


class BedrockModelAPI(ModelAPI):
    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 config: GenerateConfig = GenerateConfig(), **_model_args: Any) -> None:  # noqa: B008
        super().__init__(model_name=model_name, base_url=base_url, api_key=None, config=config)
        self.target = Target(key=f"bedrock:{model_name}", provider="bedrock", model_id=model_name,
                             region=region_from_url(base_url))

    def generate(self, input: list[ChatMessage], tools: list[Any], tool_choice: Any,
                 config: GenerateConfig) -> ModelOutput:
        request = chat_request(input, config)
        try:
            client = _client_for(self.target.region, request.connect_timeout_s, request.read_timeout_s)
            response = client.converse(**converse_params(self.target, request))
        except Exception as exc:
            raise provider_error(exc) from exc
        blocks = response.get("output", {}).get("message", {}).get("content", [])
        text = "".join(block.get("text", "") for block in blocks if isinstance(block, dict))
        output = ModelOutput.from_content(self.model_name, text,
                                          stop_reason=_STOP_REASONS.get(response.get("stopReason"), "unknown"))
        usage = response.get("usage") or {}
        if usage:
            inputs, outputs = int(usage.get("inputTokens") or 0), int(usage.get("outputTokens") or 0)
            output.usage = ModelUsage(input_tokens=inputs, output_tokens=outputs, total_tokens=inputs + outputs)
        return output


@register_model_api(name=EVAL_TYPE)
def bedrock_api() -> type[ModelAPI]:
    return BedrockModelAPI


def allow_eval_type() -> None:
    """Add ``pep_bedrock`` to the choices of evalscope's ``--eval-type`` (its parser lists them literally)."""
    from evalscope import arguments

    original = arguments.add_argument
    if getattr(original, "_pep", False):
        return

    def add_argument(parser: Any) -> None:
        original(parser)
        for action in parser._actions:
            if action.dest == "eval_type" and action.choices is not None and EVAL_TYPE not in action.choices:
                action.choices = [*action.choices, EVAL_TYPE]

    add_argument._pep = True  # type: ignore[attr-defined]
    arguments.add_argument = add_argument


allow_eval_type()
