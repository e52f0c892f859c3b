"""Work around kombu 5.x Redis-transport crashes when the broker goes away under a worker.

1. Restore at close (seen with a clean Redis restart, bench/chaos.py). On a lost connection
   Celery closes the channel; the channel's close restores unacknowledged messages, which needs
   a connection, but the connection object was already released (`self.connection.client` is
   None). kombu raises AttributeError("'NoneType' object has no attribute 'hostname'"), which
   Celery treats as unrecoverable: the worker process exits and nothing restarts it unless a
   supervisor does. Fix: if restoring at close fails for that reason, skip it. The messages
   stay in kombu's `unacked` hash in Redis and are restored by the visibility-timeout sweep
   (180 s, see celeryconfig); every task is idempotent, so a later redelivery is harmless.

2. Ack after close (issue 13 item 9; kombu 5.7.0 with redis-py 8, Redis SIGKILLed under
   load, tests/integration/test_redis_kill.py). Celery 5.7 reacts to a lost connection by
   `connection.collect()` then `connection.close()`. In collect, the consumer's channel fails
   to close (reading its pending BRPOP from the dead socket), the pidbox channel's close fails
   too and ends the loop over the channels, and the transport is released anyway
   (`transport.client = None`); close() then closes the consumer's channel, fix 1 skips the
   restore, and the channel is left with `connection = None` and no connection pool
   (tests/integration/test_kombu_fix.py replays that sequence against a real redis-server). A
   task running at the crash (acks_late: an ingest waiting out the outage) finishes later and
   Celery acks, or rejects, its message on that channel: kombu rebuilds the pool from
   `self.connection.client` and raises AttributeError("'NoneType' object has no attribute
   'client'"), which `Message.ack_log_error` does not catch (it catches connection errors):
   "Unrecoverable error", and the worker process (the prefork worker or a control-pool worker)
   exits.
   Fix: a channel whose connection was released raises BrokerConnectionReleased (a redis-py
   ConnectionError, one of the transport's connection errors) instead, only in that state.
   Celery then logs "Couldn't ack" and goes on with its new connection; the message stays in
   the `unacked` hash and the visibility-timeout sweep redelivers it (idempotent, as in 1).

3. Unacknowledged messages stamped on the consumer host's clock (issue 27). kombu scores each
   message it delivers in `unacked_index` with the consuming host's `time()`, and the ingest
   watermark and `give_back_stuck` judge those scores against Redis's TIME: a consumer whose
   clock ran 1.2 s ahead hid a message it still held from the watermark for 1.2 s. Fix: the
   module's `time` reads Redis's clock (the runtime's, worker/engine/state/redisclock.py), as
   every other time another host compares does; its visibility sweep then judges on it too.
"""

from __future__ import annotations

import logging
import time

import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger("scorer.kombu")
_PATCHED = "_scorer_patched"


class BrokerConnectionReleased(redis.exceptions.ConnectionError):
    """A kombu Redis channel was used after its broker connection had been released."""


def install() -> None:
    """Patch kombu's Redis QoS.restore_unacked, Channel._connparams and its clock once per
    process."""
    _patch_restore_unacked()
    _patch_connparams()
    _patch_clock()


def _redis_time() -> float:
    """Redis's clock as this process's runtime reads it (the host's clock if it cannot)."""
    from worker.engine.runtime import get_runtime  # late: the runtime needs the settings

    try:
        return get_runtime().clock()
    except Exception:
        return time.time()


def _patch_clock() -> None:
    if getattr(kombu_redis.time, _PATCHED, False):
        return
    setattr(_redis_time, _PATCHED, True)
    kombu_redis.time = _redis_time  # the patch (item 3)


def _patch_restore_unacked() -> None:
    qos = kombu_redis.QoS
    if getattr(qos.restore_unacked, _PATCHED, False):
        return
    original = qos.restore_unacked

    def restore_unacked(self, client=None):
        try:
            return original(self, client)
        except BrokerConnectionReleased:
            pass
        except AttributeError as err:
            if "hostname" not in str(err) and "connection_errors" not in str(err):
                raise
        log.warning("broker connection gone while restoring %d unacknowledged messages;"
                    " the visibility timeout will restore them", len(self._delivered))
        return None

    setattr(restore_unacked, _PATCHED, True)
    qos.restore_unacked = restore_unacked  # type: ignore[method-assign]  # the patch


def _patch_connparams() -> None:
    channel = kombu_redis.Channel
    if getattr(channel._connparams, _PATCHED, False):
        return
    original = channel._connparams

    def _connparams(self, *args, **kwargs):
        transport = self.connection  # None once the channel is closed
        if transport is None or getattr(transport, "client", None) is None:
            raise BrokerConnectionReleased(
                "the broker connection of this channel was released (lost and closed)")
        return original(self, *args, **kwargs)

    setattr(_connparams, _PATCHED, True)
    channel._connparams = _connparams  # type: ignore[method-assign]  # the patch
