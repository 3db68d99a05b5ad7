"""The gateway: dashboard, REST and WebSocket fan-out of transitions."""
