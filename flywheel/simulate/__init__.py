"""`flywheel simulate`: simulated users with a hidden preference, and what their feedback did.

preferences.py scores answers, judge.py turns scores into noisy feedback, runner.py talks to
the running stack (public APIs only), stats.py and report.py measure satisfaction per policy
version, chart.py draws it. command.py is what the CLI calls.
"""
