"""The sync worker: pushes profile changes (traits, fields, audience membership) to Braze,
Klaviyo and Iterable. `python -m connector.sync --config FILE`; docs/DESTINATIONS.md."""
