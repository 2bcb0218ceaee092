"""Evidence for docs/adr/0001-stream-runtime.md: does faust-streaming's exactly_once survive SIGKILL?

A 1:1 pass-through agent (faust, processing_guarantee="exactly_once") copies N records from an input
topic to an output topic. The worker is killed with SIGKILL mid-stream and restarted; then the output
is read with isolation.level=read_committed and duplicates / losses are counted. The same scenario is
the one reported upstream as faust-streaming issue #517.

Usage: KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092 python bench/evidence/faust_exactly_once.py [N] [KILLS]
(`python bench/evidence/faust_exactly_once.py worker` is the faust worker itself.)
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
import uuid

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:39092")
RUN = os.environ.get("FAUST_EVAL_RUN", "")


def worker() -> None:
    import faust

    app = faust.App(
        f"faust-eval-{RUN}",
        broker=f"kafka://{BOOTSTRAP}",
        processing_guarantee="exactly_once",
        store="memory://",
        topic_partitions=3,
        web_enabled=False,
        broker_commit_every=100,
    )
    source = app.topic(f"faust-eval-{RUN}-in", value_serializer="raw", key_serializer="raw")
    sink = app.topic(f"faust-eval-{RUN}-out", value_serializer="raw", key_serializer="raw")

    @app.agent(source)
    async def copy(stream):  # type: ignore[no-untyped-def]
        async for key, value in stream.items():
            await sink.send(key=key, value=value)

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


def count_output(topic: str) -> collections.Counter[bytes]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": f"faust-eval-reader-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    meta = consumer.list_topics(topic, timeout=10)
    if topic not in meta.topics or meta.topics[topic].error is not None:
        consumer.close()
        return collections.Counter()
    parts = list(meta.topics[topic].partitions)
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    seen: collections.Counter[bytes] = collections.Counter()
    done = {p for p in parts if ends[p] == 0}
    deadline = time.time() + 60
    while len(done) < len(parts) and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            positions = consumer.position([TopicPartition(topic, p) for p in parts])
            done |= {
                tp.partition
                for tp in positions
                if tp.offset >= ends[tp.partition] or (tp.offset < 0 and ends[tp.partition] == 0)
            }
            continue
        seen[msg.value()] += 1
        if msg.offset() + 1 >= ends[msg.partition()]:
            done.add(msg.partition())
    consumer.close()
    return seen


def main() -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    kills = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    run = uuid.uuid4().hex[:8]
    env = {**os.environ, "FAUST_EVAL_RUN": run}
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    for f in admin.create_topics([NewTopic(f"faust-eval-{run}-{s}", 3, 1) for s in ("in", "out")]).values():
        f.result()
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True})
    for i in range(n):
        producer.produce(f"faust-eval-{run}-in", key=str(i % 97).encode(), value=f"m{i}".encode())
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(60)

    out = f"faust-eval-{run}-out"

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, __file__, "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    proc = start()
    for k in range(kills):
        target = n * (k + 1) // (kills + 2)
        deadline = time.time() + 180
        while sum(count_output(out).values()) < target and time.time() < deadline:
            time.sleep(1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        print(f"kill {k + 1}: SIGKILL after ~{target} outputs")
        proc = start()
    # Let the last worker finish.
    last, stable_since = -1, time.time()
    deadline = time.time() + 300
    while time.time() < deadline:
        total = sum(count_output(out).values())
        if total != last:
            last, stable_since = total, time.time()
        elif time.time() - stable_since > float(os.environ.get("FAUST_EVAL_STABLE", "90")):
            break
        time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    seen = count_output(out)
    expected = {f"m{i}".encode() for i in range(n)}
    duplicates = sum(c - 1 for c in seen.values() if c > 1)
    missing = len(expected - set(seen))
    print(
        f"faust-streaming exactly_once, {n} records, {kills} SIGKILLs: "
        f"output={sum(seen.values())} distinct={len(seen)} duplicates={duplicates} missing={missing}"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker()
    else:
        main()
