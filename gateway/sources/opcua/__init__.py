"""Reads OPC UA server variables by subscription or poll, with security and write-back.

```yaml
sources:
  line1:
    type: opcua
    url: opc.tcp://10.0.0.7:4840
    publishing_interval: 500ms     # subscribed nodes: changes sent at most this often
    sampling_interval: 100ms       # how often the server samples them
    interval: 10s                  # polled nodes (or schedule: "*/5 * * * *")
    security_policy: Basic256Sha256
    security_mode: SignAndEncrypt  # or Sign
    certificate: /etc/edge-stream/opcua/client-cert.pem
    private_key: /etc/edge-stream/opcua/client-key.pem
    server_certificate: /etc/edge-stream/opcua/server-cert.der
    username: gateway
    password: ENC(...)
    nodes:
      temperature: {node: "ns=2;s=Temperature", deadband: 0.5}
      pressure:    {node: "ns=2;i=1001", deadband_percent: 2, sampling_interval: 50ms}
      counter:     {path: "2:Plant/2:Line1/2:Counter", mode: poll}
      setpoint:    {node: "ns=2;s=Setpoint", writable: true}
    writeback: {enabled: true}     # commands on opcua/line1/<node>/set
```

Nodes are named in the config (the name is a topic level) and found by node id
(`ns=2;s=Temperature`, `ns=2;i=1001`) or by browse path from the Objects folder
(`2:Plant/2:Line1/2:Counter`, each level with its namespace index; resolved again at
each connection). Each node is either subscribed (`mode: subscribe`, the default: a
monitored item on one subscription; the server samples it every `sampling_interval`
and sends what changed every `publishing_interval`) or polled (`mode: poll`: all polled
nodes read in one request every `interval`, or at the times of `schedule`, with
`jitter` and `missed` as for every polled source, see README "Schedules").

`deadband` is the OPC UA absolute deadband: the server reports a number only when it
moved more than that. `deadband_percent` is applied by the source, as the Modbus
source does: a number is sent only when it moved more than that percentage of the
last value sent (many servers, asyncua's among them, lack the EURange-based percent
deadband of the standard).

Output: one FlowFile per value on `opcua/<source>/<node>` (`topic`, a template with
`{source}` and `{node}`; a node's own `topic`, a template too, overrides it), with
attributes `source`,
`node` (the config name) and `node_id`, and JSON content

  {"value": 21.5, "type": "Double", "source_ts": "2024-05-01T12:00:00.123Z",
   "server_ts": "2024-05-01T12:00:00.125Z", "status": "Good", "status_code": 0}

`type` is the value's OPC UA type; `source_ts`/`server_ts` are the server's timestamps
(null when it sent none); `status` is the status code's name (`Good`,
`BadSensorFailure`, ...) and `status_code` its number. Tested types, as JSON: Boolean
→ true/false; SByte, Byte, Int16, UInt16, Int32, UInt32, Int64, UInt64 → integers;
Float, Double → numbers (NaN and infinities → null); String → text (a byte that is
not UTF-8, such as a latin-1 "°", as U+FFFD); DateTime → ISO 8601 UTC text;
ByteString → base64 text; a one-dimensional array of these → a JSON array. Other
types arrive as their text form (untested).

Security: `security_policy: None` (the default) or `Basic256Sha256` with
`security_mode: Sign` or `SignAndEncrypt` (the default); then `certificate` and
`private_key` (PEM or DER files: the gateway's application instance certificate,
which the server must trust; its subject alternative name URI is used as the
application URI) and
`server_certificate` (the server's certificate: the gateway encrypts to it, so a server
with another one cannot open the channel). These keys and `security_mode` are refused
without `security_policy: Basic256Sha256`, which alone secures the channel (they were
ignored: neither signed nor encrypted). `username`/`password` log in as that user
(`password` may be `ENC(...)` and is never printed); without them, anonymously.

Errors: a server that cannot be reached, that times out or that drops the connection
is retried with the engine's backoff for sources (0.5 s doubling up to 30 s, with
jitter); on each connection the nodes are resolved and the subscription is created
again. A server that refuses the user (BadUserAccessDenied, BadIdentityTokenRejected)
or the secure channel (BadCertificateUntrusted, BadSecurityChecksFailed, ..., or one
that closes the connection while a secure channel is being opened) is a permanent
error: one line in the log and in /api/status (`state: failed`), no retries until the
config is reloaded, so a refused login never hammers a server that may lock the account.

Status (`/api/status`, this source's entry): `connected` (true while the session is
up), `server` (`url`, `state` online/offline/connecting, `last_error` while offline,
`previous_error` once it answers again, `last_error_at`, `connected_at`), `values`,
`queue_bytes`, `missed_runs` (with polled nodes: poll times passed without a poll,
see `missed`), and each node's `node_id`, `mode`, `values` and `error` (a node the
server does not have: logged once, left out until the next connection, the others go
on).

Back-pressure: subscribed values wait in a queue of at most `max_queue_bytes` (4MiB)
until the engine takes them. While the gateway's buffer is full with `overflow: block`
the engine stops taking them and polled nodes are not read (their missed times are
skipped); subscribed values keep coming from the server, so beyond `max_queue_bytes`
the oldest are dropped, counted in `dropped` (`edge_stream_source_dropped_total` in
/metrics) and logged at most every 30 s. The server's own queue (`queue_size` per
node) is bounded by the server.

Write-back (`writeback: {enabled: true}`; also `url`, `topic`, `result_topic`,
`client_id`, `username`, `password`): the source subscribes to
`opcua/<source>/{node}/set` on the gateway's broker (`writeback.url`, default the
top-level `mqtt.url`, whose `username`, `password` and client id prefix then apply
unless write-back sets its own). The payload is a JSON value (`21.5`, `true`, `"text"`,
`[1, 2]`) or `{"value": 21.5, "id": "any"}`. Only nodes marked `writable: true` are
written: the value is converted to the node's data type (as read from the server:
integers range-checked, DateTime from ISO 8601 text, ByteString from base64, arrays
element by element), written, read back and compared, and the outcome published on
`opcua/<source>/{node}/set/result` (and on an MQTT 5 response topic if the command has
one): `{"node": "setpoint", "ok": true, "value": 21.5, "requested": 21.5, "ts": ...}` or
`{"ok": false, "error": "..."}`. Commands are carried out between two reads of the
source, so they take effect while the engine is reading from it; one under way when the
source stops (a reload, a shutdown) is answered `"ok": false`, "the source stopped
during the write", as it may or may not have been written.

Inside: `config` (the keys), `values` (OPC UA values to JSON and back) and `source`
(`OpcuaSource`, the only user of asyncua's client); write-back's MQTT connection is
`gateway.mqtt.commands`, shared with the Modbus source.
"""

from gateway.sources.opcua.config import NodeConfig, OpcuaSourceConfig, OpcuaWritebackConfig
from gateway.sources.opcua.source import OpcuaSource

__all__ = ["NodeConfig", "OpcuaSource", "OpcuaSourceConfig", "OpcuaWritebackConfig"]
