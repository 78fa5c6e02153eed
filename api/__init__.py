"""The HTTP API: validates notifications, writes them to Redis and answers at once."""
