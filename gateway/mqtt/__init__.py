"""The only place that speaks MQTT.

wire     our MQTT 5 client on asyncio (the MQTT source: acks after commit, in batches)
client   our publishing client (the MQTT sink, the Modbus write-back), connect refusals
urls     mqtt:// and mqtts:// URLs, TLS contexts
broker   the embedded Mosquitto: start, supervise, stop
"""
