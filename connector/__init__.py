"""The ESP connector: a send-time personalization API over the Firestore serving layer and a
trigger webhook worker. Not built yet; it will share only the document contract (`schemas/`) with
the pipeline, never its Beam code."""
