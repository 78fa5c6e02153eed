"""Baseline designs the service is measured against (loadtest/bench.py); not part of the service."""
