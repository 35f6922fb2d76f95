"""`avarnet serve`: many cameras in one process, events with clips and snapshots, MQTT, a review page.

Modules: config (YAML, validated), cameras (decoder thread per camera), engine (shared encoders,
batched across cameras), clips (packet ring buffer, remux, snapshots, retention), events
(SQLite), mqtt (paho-mqtt, persisted outbox), web (Starlette page + API), app (the process).
"""
