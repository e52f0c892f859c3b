"""Work around a kombu 5.x Redis-transport crash when the broker restarts under a worker.

On a lost connection Celery closes the channel; the channel's close restores unacknowledged
messages, which needs a connection, but the connection object was already released
(`self.connection.client` is None). kombu raises AttributeError("'NoneType' object has no
attribute 'hostname'"), which Celery treats as unrecoverable: the worker process exits and
nothing restarts it unless a supervisor does. Seen in the chaos run (bench/chaos.py).

The fix: if restoring at close fails for that reason, skip it. The messages stay in kombu's
`unacked` hash in Redis and are restored by the visibility-timeout sweep (60 s, see
celeryconfig); every task is idempotent, so a later redelivery is harmless.
"""

from __future__ import annotations

import logging

from kombu.transport import redis as kombu_redis

log = logging.getLogger("scorer.kombu")
_PATCHED = "_scorer_patched"


def install() -> None:
    """Patch kombu's Redis QoS.restore_unacked once per process."""
    qos = kombu_redis.QoS
    if getattr(qos.restore_unacked, _PATCHED, False):
        return
    original = qos.restore_unacked

    def restore_unacked(self, client=None):
        try:
            return original(self, client)
        except AttributeError as err:
            if "hostname" not in str(err) and "connection_errors" not in str(err):
                raise
            log.warning("broker connection gone while restoring %d unacknowledged messages;"
                        " the visibility timeout will restore them", len(self._delivered))
            return None

    setattr(restore_unacked, _PATCHED, True)
    qos.restore_unacked = restore_unacked
