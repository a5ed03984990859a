"""What every kind of job shares: rows and their one transition function, claiming with a per-kind limit,
the worker's heartbeat, starting a process in its own group, following it, cancel (SIGTERM, then SIGKILL
after the grace), the ``max_job_s`` timeout, recovery after a crash, and the live-events stream.

Modules
-------
``models``   ``JobStatus`` (queued, running, cancelling, completed, failed, cancelled, interrupted), ``FINISHED``,
             ``ACTIVE``, ``ALLOWED``, ``TransitionError``, ``utcnow``, ``new_job_id``; ``JobColumns``, the
             declarative mixin with the columns every job row has (id, created_at, started_at, finished_at,
             status, model_key, target, params, api_key_encrypted, pid, pgid, worker_id, heartbeat_at,
             progress, error, exit_code, cancel_requested; properties ``job_status``, ``is_finished``; class
             attribute ``noun`` for 404s); ``JobWorker`` (table ``stress_workers``: one row per live worker);
             ``transition(model, job_id, to, *where, **values) -> bool``: the only way any row changes status
             (one conditional UPDATE; starting sets started_at; finishing sets finished_at and wipes
             api_key_encrypted; the caller commits). ``backend.stress.models.transition(job_id, to, *where,
             model=StressJob, **values)`` is the same function with the table last.
``process``  ``start_process(argv, log_path=, env=, cwd=, header=)`` (new session = own process group, stdout
             and stderr appended to the log after ``header``), ``child_env(extra, drop=())``,
             ``process_alive(pid)``, ``is_job_process(pid, marker)``, ``signal_group(pgid, sig)``.
``kinds``    The interface below, and the registry: ``registered_kinds()`` (the kinds one worker runs) and
             ``tick_hooks()`` (capacity searches' ``advance_searches``).
``worker``   ``Worker(app, worker_id=None, kinds=None, hooks=None)``, ``run_worker(app, stop_event)``,
             ``python -m backend.jobs.worker``.
``events``   ``follow(app, model, job_id, updates=, final=, poll_s=, heartbeat_s=)``: the SSE generator.
``service``  ``get_job(model, id)`` (404 "no <noun> '<id>'"), ``cancel_job(model, id)``, ``worker_alive(stale_s)``.

A kind
------
A kind is an object (see ``backend/stress/kind.py``, ``StressKind``) with three attributes and five methods.
Hooks run in the worker's app context, may read and change the job row and add rows, and never commit.

``name: str``      "stress", "evaluation"; log lines read "<name> job <id> ...".
``model``          its row model: ``class EvaluationJob(JobColumns, db.Model)`` with ``__tablename__`` and its
                   own columns; ids from ``new_job_id``; a web process creates it ``queued`` and commits.
``section: str``   its configuration section, which must hold ``max_concurrent`` (jobs of this kind running at
                   once, counted across all workers) and ``max_job_s`` (the hard limit on one job's process).

``prepare(job, ctx) -> Launch``   After the claim (the row is ``running``, ``worker_id`` set). Decrypt secrets,
    check files and the target, write input files, build the argument list. Return
    ``Launch(command, log_path, env, state, header="", cwd=PROJECT_ROOT, program="the job's process")``;
    ``env`` is the whole environment (``child_env({...}, drop=(secret var,))``), ``state`` is the kind's
    follow-state (any object), ``program`` names it in "cannot start <program>: ...". Raise
    ``Refused(reason)`` to end the job ``failed`` with ``reason`` as its error (no process is started).
``process_marker(job, state, ctx) -> str``   An argument only this job's command line contains (stress:
    ``--outputs-dir=<its folder>``); recovery re-attaches only to a live pid whose /proc cmdline has it.
``recover_state(job, ctx) -> state``   The follow-state of a job that claims to run and that no live worker
    follows, rebuilt from its row and files (what it already ingested included).
``update(job, running, ctx) -> None``   Every tick while the worker follows the job, the tick that finds its
    process gone included (then ``conclude``): progress (``job.progress``), live rows, results ingested so
    far (idempotently). A job found dead on recovery, or ended by a stopping worker, gets ``conclude`` only.
    ``running`` is a ``Running``: ``kind``, ``job_id``, ``pid`` (= pgid), ``state``, ``process`` (None when
    re-attached), ``started`` (monotonic), ``wall_started`` (epoch s of started_at), ``timed_out``.
``conclude(job, running, ctx, ending) -> Outcome``   The process has gone (exited, found dead on recovery,
    or stopped by a worker shutting down). Ingest what is left, then decide:
    ``Outcome(status, error=None, values={})``; ``values`` are other columns written with the change.
    ``ending`` is ``Ending(exit_code, interrupted_reason, timed_out)``: ``exit_code`` is None when unknown
    (re-attached, found dead, or the worker stopped; then ``interrupted_reason`` says so when it is the
    worker stopping). ``job.cancel_requested`` tells a cancelled job. The worker writes ``exit_code`` itself,
    and a timed-out job ends ``failed`` ("stopped after <section>.max_job_s (N s)") whatever the kind says.
``ctx`` is ``Context(config, settings, worker_id)``: the whole ``app.config["PEP"]``, its ``[section]``, the worker.

What the worker does with a kind each tick: heartbeat (``heartbeat_at`` of its jobs), ``update`` of each
job it follows, SIGTERM to the group on ``cancel_requested``/``cancelling`` or past ``max_job_s`` and SIGKILL
``stress.kill_grace_s`` later, ``conclude`` + ``transition`` when the process has gone, then the tick hooks,
then claims (oldest queued first) while fewer than ``max_concurrent`` run. Loop settings stay in ``stress``:
``stress.poll_interval_s``, ``stress.worker_stale_s`` (heartbeat age after which a worker counts as gone;
recovery runs this often), ``stress.kill_grace_s``.

A kind's bug does not stop the worker or the other jobs: an exception from ``prepare`` fails that job ("the
worker could not prepare the job (<ExceptionType>); see the worker's log"), one from ``update`` is logged
each tick (the job still ends when its process does), one from ``conclude`` ends it ``failed`` ("the worker
could not end the job ..."); the traceback goes to the worker's log only.

Adding a kind: write it, give it a config section with ``max_concurrent`` and ``max_job_s``, and add one line
to ``registered_kinds()`` in ``backend/jobs/kinds.py``. For its web side: ``jobs.service.cancel_job(Model,
id)`` and ``jobs.events.follow(app, Model, id, updates=lambda job, cursor: [sse_event(...)], final=...)``.
"""
