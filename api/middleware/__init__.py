"""The ASGI layers every request passes before any route: access log, body limits, hot path."""
