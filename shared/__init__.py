"""Code shared by the API and the worker: settings, schemas, tables, Redis keys, SQL."""
