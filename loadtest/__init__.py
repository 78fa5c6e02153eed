"""Load tests and benchmarks (locust, drain benchmark)."""
