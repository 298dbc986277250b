"""The ESP connector: the send-time personalization API over the Firestore serving layer
(`python -m connector`, connector/app.py) and the trigger webhook worker
(`python -m connector.triggers`). Its own deployable: it shares the document contract
(`schemas/`) and the pure engagement rules (`transforms/rules/tracking.py`, `holdout.py`) with the
pipeline, never its Beam code."""
