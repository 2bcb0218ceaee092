"""Stream processors: Kafka -> Kafka steps run by :mod:`streams.processor` (exactly-once).

- :mod:`processors.validation`: decoding and checking of the records arriving on ``absences``, and the
  dead letter (``absences.invalid``) of the bad ones.
- :mod:`processors.fanout`: one Delivery per absence change and matching destination.
- :mod:`processors.delivery`: sends each Delivery through its connector (retries, convergence).

Exceptions of this package derive from :class:`ProcessorError`.
"""


class ProcessorError(Exception):
    """Root of the processors package's errors."""
