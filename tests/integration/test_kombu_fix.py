"""The kombu restore-at-close crash is contained (see worker/doors/kombu_fix.py)."""

from kombu.transport import redis as kombu_redis

from worker.doors import kombu_fix


def test_restore_with_released_connection_does_not_raise():
    kombu_fix.install()

    class Channel:
        def conn_or_acquire(self, client=None):
            raise AttributeError("'NoneType' object has no attribute 'hostname'")

    qos = kombu_redis.QoS.__new__(kombu_redis.QoS)
    qos.channel = Channel()
    qos._delivered = {"tag": object()}
    assert qos.restore_unacked() is None  # contained: no AttributeError escapes


def test_other_attribute_errors_still_raise():
    kombu_fix.install()

    class Channel:
        def conn_or_acquire(self, client=None):
            raise AttributeError("something else")

    qos = kombu_redis.QoS.__new__(kombu_redis.QoS)
    qos.channel = Channel()
    qos._delivered = {}
    try:
        qos.restore_unacked()
    except AttributeError:
        return
    raise AssertionError("expected AttributeError")


def test_ack_after_the_broker_died_under_a_consumer_is_a_connection_error():
    """Issue 13 item 9, with real kombu and a redis-server SIGKILLed under a consumer: Celery
    5.7 reacts to the lost connection with `collect()` then `close()`. The consumer's channel
    (a BRPOP pending, one message delivered and unacknowledged) fails to close in collect, the
    broadcast channel beside it (Celery's pidbox) aborts the rest, the transport is released,
    and close() then closes the channel without a connection (fix 1). The task of the message
    finishes later and Celery acks it: that raised AttributeError('client') out of
    `ack_log_error`, "Unrecoverable error". Now it is a connection error that Celery logs, and
    the message stays in kombu's unacked hash for the visibility timeout to restore."""
    import logging

    import redis
    from kombu import Connection, Consumer, Exchange, Producer, Queue
    from kombu.common import ignore_errors

    from scorer_local.stack import RedisServer

    kombu_fix.install()
    server = RedisServer(appendonly=True).start()
    conn = Connection(server.url)
    try:
        got = []
        queue = Queue("kf")
        Producer(conn.default_channel).publish({"n": 1}, routing_key="kf", declare=[queue])
        Consumer(conn, [queue], callbacks=[lambda body, m: got.append(m)]).consume()
        broadcast = Queue("kf.bc", Exchange("kf.bc", type="fanout"), auto_delete=True)
        Consumer(conn.channel(), [broadcast], callbacks=[lambda *a: None]).consume()
        while not got:
            conn.drain_events(timeout=2)
        try:
            conn.drain_events(timeout=0.05)  # leaves a BRPOP pending, as a consumer does
        except TimeoutError:
            pass
        msg = got[0]
        client = redis.Redis.from_url(server.url)
        client.config_set("appendfsync", "always")  # the unacked entry survives the SIGKILL
        client.close()
        server.kill()
        try:  # celery.worker.consumer.Consumer.on_connection_error_after_connected
            conn.collect(socket_timeout=5)
        except Exception:
            pass
        ignore_errors(conn, conn.close)
        server.start()
        log = logging.getLogger("test.kombu_fix")
        msg.ack_log_error(log, conn.connection_errors)  # as Request.acknowledge: no raise
        msg.reject_log_error(log, conn.connection_errors, requeue=True)  # Reject(requeue=True)
        assert not msg.acknowledged
        client = redis.Redis.from_url(server.url)
        assert client.hexists("unacked", msg.delivery_tag)  # for the visibility timeout
        client.close()
    finally:
        ignore_errors(conn, conn.close)
        server.cleanup()


def test_a_channel_with_a_released_connection_raises_a_connection_error():
    kombu_fix.install()
    channel = kombu_redis.Channel.__new__(kombu_redis.Channel)
    channel.connection = None
    try:
        channel._connparams()
    except kombu_fix.BrokerConnectionReleased as err:
        assert isinstance(err, kombu_redis.Transport.connection_errors)
        return
    raise AssertionError("expected BrokerConnectionReleased")
