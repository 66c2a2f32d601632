"""`soar ingest`: files of detections and plain alerts through the webhook intake."""
