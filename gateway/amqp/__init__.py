"""AMQP 0-9-1: our publishing client (the amqp sink)."""
