"""Accuracy evaluations (evalscope eval): datasets, scoring with intervals, jobs, pages and API."""
