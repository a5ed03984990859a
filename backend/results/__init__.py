"""Stress-test results: per-request rows, tables, goodput and SLO capacity, cost, figures, exports."""
