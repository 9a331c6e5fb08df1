"""The Spark engine: a batch's plan run as Spark jobs where the features live.

The driver (a Celery worker process, with its Spark session) reads the slice's union of
columns through Spark, a job per shard of the batch's models; each partition's rows are
scored on the executors by every model of the shard, in the same sandboxes as the Celery
engine's; the executors write the runs' Parquet files into the scores table's folder and
return their metadata; the driver commits them with `deltalake` and checks them as the
Celery engine does (scoring.engine.commit).
"""
