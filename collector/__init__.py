"""The tracking collector: a Segment- and RudderStack-compatible HTTP tracking API that publishes
each event it accepts to Pub/Sub (`python -m collector`, collector/app.py; docs/COLLECTOR.md).

Its own deployable. It validates only what it must to forward an event (auth, size, JSON
object); the pipeline validates deeply and dead-letters what is bad. Of the pipeline it uses
only the rule for source names (transforms/rules/source_tags.py, pure, no Beam), the contract
between the two; it reuses the connector's JSON log formatter."""
