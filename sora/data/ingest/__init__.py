"""`sora ingest`: real videos and images (and their captions) -> training shards in `sora synth`'s layout.

sources (what to read, captions) -> decode (PyAV, streamed, upright, constant rate) -> clips (shots,
windows) -> process (filters, one source's samples) -> writer (mp4 / png + json, shards) ->
run (chunks, ranks, workers, resume) -> report (counts by reason, summary). Entry point: run.ingest.
"""
