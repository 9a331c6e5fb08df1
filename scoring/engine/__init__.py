"""The batch engine: a batch's runs read their slice once, score it in sandboxes chunk by
chunk, and commit their partitions of the scores table together."""
