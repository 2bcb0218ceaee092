"""The operator view: SQL tables projected from the delivery-status and destinations topics.

``db`` (schema, engine, migrations), ``projector`` (pure logic: a batch of records -> rows),
``runner`` (the Kafka consumer component), ``queries`` (the read side of the web API).
"""
