"""The only place that speaks MQTT.

wire     our MQTT 5 client on asyncio (the MQTT source: acks after commit, in batches)
client   our publishing client (the MQTT sink, write-back), connect refusals
commands write-back's side channel for sources (Modbus, OPC UA): commands in, results out
urls     mqtt:// and mqtts:// URLs, TLS contexts
broker   the embedded Mosquitto: start, supervise, stop
"""
