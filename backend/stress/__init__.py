"""Stress tests: job rows, the worker that runs ``evalscope perf``, its command builder, outputs and API."""
