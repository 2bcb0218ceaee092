"""``/metrics``: deliveries by status and destination, attempt latency, consumer lag, delay backlog,
all computed at scrape time from the view and the broker."""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from projections.projector import CONSUMER
from schemas.delivery import Status
from streams.kafka import connection_config, group_id, make_producer
from streams.topics import Topics
from tests.web.conftest import Api, attempt, fact, produce_statuses


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_from_the_view_and_the_broker(api: Api) -> None:
    topics = Topics(api.settings)
    api.seed(
        fact(destination_id="dst-1", status=Status.ERROR, attempt=attempt(duration_ms=120)),
        fact(destination_id="dst-1", status=Status.ERROR, attempt=attempt(duration_ms=3000)),
        fact(destination_id="dst-2", tenant="globex", status=Status.SUCCESSFUL),
    )
    produce_statuses(api.settings, [fact(destination_id="dst-3")])  # not yet projected: lag 1
    producer = make_producer(api.settings)
    for _ in range(3):
        producer.produce(topics.retries[0], key=b"dst-1|abs-1", value=b"waiting", partition=0)
    assert producer.flush(30) == 0
    delivery_group = group_id(api.settings, "delivery")
    worker = Consumer({**connection_config(api.settings), "group.id": delivery_group})
    worker.commit(offsets=[TopicPartition(topics.retries[0], 0, 1)], asynchronous=False)  # read one of three
    worker.close()

    with api.client("view") as scraper:  # a token for all tenants (test_edges: who may scrape)
        response = scraper.get("/metrics")
    assert response.status_code == 200
    values = samples(response.text)
    assert (
        values[("absync_deliveries", (("destination", "dst-1"), ("status", "ERROR"), ("tenant", "acme")))]
        == 2
    )
    assert (
        values[
            ("absync_deliveries", (("destination", "dst-2"), ("status", "SUCCESSFUL"), ("tenant", "globex")))
        ]
        == 1
    )
    assert values[("absync_delivery_attempt_duration_seconds_bucket", (("le", "0.25"),))] == 1
    assert values[("absync_delivery_attempt_duration_seconds_bucket", (("le", "5.0"),))] == 2
    assert values[("absync_delivery_attempt_duration_seconds_count", ())] == 2
    assert values[("absync_delivery_attempt_duration_seconds_sum", ())] == 3.12
    assert values[("absync_kafka_metrics_up", ())] == 1
    assert values[("absync_consumer_lag", (("group", f"sql:{CONSUMER}"), ("topic", topics.status)))] == 1
    assert values[("absync_consumer_lag", (("group", delivery_group), ("topic", topics.retries[0])))] == 2
    assert values[("absync_delay_topic_backlog", (("topic", topics.retries[0]),))] == 2
    assert values[("absync_delay_topic_backlog", (("topic", topics.retries[1]),))] == 0
