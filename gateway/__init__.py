"""Edge Stream: an MQTT-native IoT gateway."""

__version__ = "0.1.0"
