"""The overview (``GET /api/v1/stats/overview`` and the home page's analytics panel): counts of models,
datasets, evaluation runs and jobs of every kind by status, the success rate of finished jobs, recent
activity, and the current leaders (each leaderboard column's best, with the models tied with it).

Success rate is completed over finished (completed, failed, cancelled, interrupted), per kind and overall,
with its counts; with no finished job it cannot be computed and says so."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from backend.analytics.leaderboard import leaderboard
from backend.db import db
from backend.evaluations.models import EvaluationCell, EvaluationJob
from backend.jobs.models import FINISHED, JobStatus
from backend.stress.models import StressJob

RECENT = 10
LEADER_COLUMNS = 6


def _by_status(model: Any) -> dict[str, int]:
    rows = db.session.execute(select(model.status, func.count()).group_by(model.status)).all()
    return {status.value: 0 for status in JobStatus} | {status: count for status, count in rows}


def _rate(counts: dict[str, int]) -> dict[str, Any]:
    finished = sum(counts.get(s.value, 0) for s in FINISHED)
    completed = counts.get(JobStatus.COMPLETED.value, 0)
    if not finished:
        return {"value": None, "completed": 0, "finished": 0, "reason": "no finished job"}
    return {"value": completed / finished, "completed": completed, "finished": finished, "reason": None}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def overview() -> dict[str, Any]:
    from backend.catalog.service import get_catalog
    from backend.evaluations.dataset_models import EvalDataset
    from backend.results.capacity_search import CapacitySearch

    kinds = {"stress": _by_status(StressJob), "evaluation": _by_status(EvaluationJob),
             "capacity_search": _by_status(CapacitySearch)}
    total: dict[str, int] = {}
    for counts in kinds.values():
        for status, count in counts.items():
            total[status] = total.get(status, 0) + count
    evaluated = db.session.scalar(select(func.count(func.distinct(EvaluationCell.model_key)))) or 0
    stressed = db.session.scalar(select(func.count(func.distinct(StressJob.model_key)))) or 0
    eval_datasets = db.session.scalar(select(func.count()).select_from(EvalDataset)) or 0
    used = db.session.scalar(select(func.count(func.distinct(EvaluationCell.dataset_id)))) or 0
    runs = db.session.scalar(select(func.count()).select_from(EvaluationCell)
                             .where(EvaluationCell.status == "completed")) or 0
    recent = []
    for kind, model, link in (("stress", StressJob, "stress"), ("evaluation", EvaluationJob, "evaluation")):
        for job in db.session.scalars(select(model).order_by(model.created_at.desc()).limit(RECENT)):
            recent.append({"kind": kind, "id": job.id, "model": job.model_key, "status": job.status,
                           "created_at": _iso(job.created_at), "finished_at": _iso(job.finished_at), "link": link})
    recent.sort(key=lambda r: r["created_at"] or "", reverse=True)
    board = leaderboard()
    leaders = [{"column": c["key"], "label": c["label"], "metric": c["metric"], "best": c["best"],
                "tied": c["tied"], "models": c["models"],
                "score": next(r["cells"][c["key"]] for r in board["rows"] if r["model"] == c["best"])}
               for c in sorted(board["columns"], key=lambda c: -c["models"])[:LEADER_COLUMNS]]
    for leader in leaders:
        cell = leader["score"]
        leader["score"] = {k: cell[k] for k in ("score", "n", "ci_low", "ci_high", "method", "job_id", "cell_id")}
    return {
        "models": {"catalogue": len(get_catalog().models), "evaluated": evaluated, "stress_tested": stressed},
        "datasets": {"stored": eval_datasets, "evaluated": used},
        "evaluation_cells_completed": runs,
        "jobs": {"by_kind": kinds, "by_status": total, "total": sum(total.values())},
        "success_rate": {"overall": _rate(total), **{kind: _rate(counts) for kind, counts in kinds.items()}},
        "recent": recent[:RECENT], "leaders": leaders,
    }
