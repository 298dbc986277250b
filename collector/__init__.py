"""The tracking collector: a Segment- and RudderStack-compatible HTTP tracking API that publishes
each event it accepts to Pub/Sub (`python -m collector`, collector/app.py; docs/COLLECTOR.md).

Its own deployable. It validates only what it must to forward an event (auth, size, JSON
object); the pipeline validates deeply and dead-letters what is bad. It shares no code with the
pipeline; it reuses the connector's JSON log formatter."""
