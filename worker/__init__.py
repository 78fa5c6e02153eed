"""The arq worker that hosts the drain from Redis into Postgres."""
