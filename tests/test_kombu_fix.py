"""The kombu restore-at-close crash is contained (see worker/kombu_fix.py)."""

from kombu.transport import redis as kombu_redis

from worker import kombu_fix


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
