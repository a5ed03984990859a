"""Leaderboard and analytics over scored evaluation runs and stress-test results: the matrix with ties
(``leaderboard``), paired tests (``paired``), trends (``trends``), quality against speed and cost
(``quality``), correlations (``correlations``), the overview (``overview``); the statistics in ``stats``;
``service`` is what the API (``api``) and the pages (``pages``) call; exports in ``export``."""
