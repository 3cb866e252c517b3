"""The keyed_dispatch benchmark suite (run with ``make bench`` or ``make bench-quick``).

Not part of the installed package: it lives in the source checkout only.
``suite`` runs the workloads, ``systems`` holds the dispatcher under test and
the baselines, ``report`` prints the table and draws the chart.
"""
