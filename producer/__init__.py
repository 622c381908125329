"""Publishing ``image.v1`` messages to Kafka, topic creation and dead-letter redrive.

:class:`producer.publisher.Publisher` is the reusable part (benchmarks and tests publish through
it); ``python -m producer`` is the command line.
"""
