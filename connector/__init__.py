"""The ESP connector: the send-time personalization API over the Firestore serving layer
(`python -m connector`, connector/app.py) and the trigger webhook worker
(`python -m connector.triggers`). Its own deployable: it shares only the document contract
(`schemas/`) with the pipeline, never its Beam code."""
