"""Development tooling: embedded PostgreSQL and Redis, and `make run`'s launcher. Neither process imports it."""
