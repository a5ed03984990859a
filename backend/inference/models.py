"""Stored inference runs: the request (never secrets) and one result per model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from backend.db import db
from backend.db_types import Json, UtcDateTime
from backend.security.auth import created_by as actor_name
from backend.text import cut_texts


def utcnow() -> datetime:
    return datetime.now(UTC)


class InferenceRun(db.Model):
    __tablename__ = "inference_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | completed
    prompt: Mapped[str] = mapped_column(Text)
    system: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)  # max_tokens, temperature, media
    models: Mapped[list[str]] = mapped_column(Json, default=list)
    created_by: Mapped[str | None] = mapped_column(String(100), default=actor_name)  # who started it (backend/security)

    results: Mapped[list[InferenceResult]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="InferenceResult.position"
    )

    def as_dict(self, *, with_results: bool = True, preview: int | None = None) -> dict[str, Any]:
        """The run; with ``preview``, long texts are cut at that many characters and each cut text's
        full length is given beside it (``prompt_chars``, ``output_chars``...)."""
        data: dict[str, Any] = {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "status": self.status,
            "prompt": self.prompt,
            "system": self.system,
            "params": self.params,
            "models": self.models,
            "created_by": self.created_by,
        }
        if preview is not None:
            cut_texts(data, ("prompt", "system"), preview)
        if with_results:
            data["results"] = [result.as_dict(preview=preview) for result in self.results]
        return data


class InferenceResult(db.Model):
    __tablename__ = "inference_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("inference_runs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    model: Mapped[str] = mapped_column(String(200), index=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    provider: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # completed | failed | cancelled
    output: Mapped[str] = mapped_column(Text, default="")
    reasoning: Mapped[str] = mapped_column(Text, default="")
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    token_source: Mapped[str | None] = mapped_column(String(16))  # "server" when usage was reported
    finish_reason: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    # The answer (or its reasoning) was longer than inference.max_stored_chars and is stored cut there.
    truncated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    run: Mapped[InferenceRun] = relationship(back_populates="results")

    def as_dict(self, *, preview: int | None = None) -> dict[str, Any]:
        data = {
            "model": self.model,
            "display_name": self.display_name,
            "provider": self.provider,
            "status": self.status,
            "output": self.output,
            "reasoning": self.reasoning,
            "truncated": bool(self.truncated),
            "metrics": {
                "ttft_ms": self.ttft_ms,
                "latency_ms": self.latency_ms,
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "tokens_per_s": self.tokens_per_s,
                "token_source": self.token_source,
                "finish_reason": self.finish_reason,
            },
            "error": {"code": self.error_code, "message": self.error_message} if self.error_code else None,
        }
        if preview is not None:
            cut_texts(data, ("output", "reasoning"), preview)
        return data

