"""Tests against a real Redis Cluster that the tests start (see ``conftest.py``)."""
