"""Deployment shapes: the local launcher (`make run`), the Dockerfile, compose overrides."""
