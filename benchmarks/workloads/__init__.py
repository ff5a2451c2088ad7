"""The workloads of ``run_all.py``: each measures its rows on every loop and peer it is
given, with ``_harness``, and returns plain records (dataclasses) for the report."""
