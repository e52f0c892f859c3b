"""Redis Sentinel: settings, `connect`, kombu's options, and a worker behind a real Sentinel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import redis
from celery import Celery
from pydantic import ValidationError

from scorer_local.stack import Processes, RedisServer, free_port, redis_server_bin, stop_all
from tests.conftest import ROOT, SDKAPPID, SECRET, worker_env
from tests.helpers import gift_body, start_body, wait_for
from worker.engine.settings import SENTINEL_PORT, Settings, parse_sentinel_url
from worker.engine.state import keys

MASTER = "mymaster"
MASTER_PASSWORD = "master-pw-5f2a"
SENTINEL_PASSWORD = "sentinel-pw-9c4e"


class SentinelProcess:
    """One redis-server in Sentinel mode on a free loopback port, monitoring one master."""

    def __init__(self, directory, master_port: int, password: str | None = None,
                 master_password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        conf = directory / f"sentinel-{self.port}.conf"
        lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {directory}",
                 f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1",
                 f"sentinel down-after-milliseconds {MASTER} 1000"]
        if master_password:
            lines.append(f"sentinel auth-pass {MASTER} {master_password}")
        if password:
            lines.append(f"requirepass {password}")
        conf.write_text("\n".join(lines) + "\n")  # Sentinel rewrites it: a file of its own
        self.log = open(directory / f"sentinel-{self.port}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen([redis_server_bin(), str(conf), "--sentinel"],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        client = redis.Redis(host="127.0.0.1", port=self.port, password=password,
                             socket_timeout=1, decode_responses=True)
        try:
            wait_for(lambda: self._knows(client, master_port), timeout=15,
                     what=f"the Sentinel on {self.port} to know its master")
        except AssertionError:
            self.stop()
            raise
        finally:
            client.close()

    def _knows(self, client: redis.Redis, master_port: int) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the Sentinel exited ({self.proc.returncode})")
        try:
            addr = client.sentinel_get_master_addr_by_name(MASTER)
        except redis.RedisError:
            return False
        return bool(addr) and int(addr[1]) == master_port

    def url(self, db: int = 0, password: str | None = None) -> str:
        """kombu's URL of this Sentinel; `password` is the master's."""
        auth = f":{password}@" if password else ""
        return f"sentinel://{auth}127.0.0.1:{self.port}/{db}"

    def listed(self, db: int = 0, dead_first: bool = False) -> str:
        """kombu's ';' list of this Sentinel and one that is down (nothing listens there)."""
        dead = f"sentinel://127.0.0.1:{free_port()}/{db}"
        return f"{dead};{self.url(db)}" if dead_first else f"{self.url(db)};{dead}"

    def stop(self) -> None:
        stop_all([self.proc])
        self.log.close()


@pytest.fixture(scope="module")
def master():
    """The master the Sentinel watches: a redis-server of its own (no password)."""
    if redis_server_bin() is None:
        pytest.exit("redis-server is not installed (apt-get install redis-server)", 2)
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def sentinel(master, tmp_path_factory):
    s = SentinelProcess(tmp_path_factory.mktemp("sentinel"), master.port)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    """A password-protected master behind a password-protected Sentinel (different passwords)."""
    server = RedisServer().start()
    try:
        r = redis.Redis(host="127.0.0.1", port=server.port)
        r.config_set("requirepass", MASTER_PASSWORD)
        r.close()
        s = SentinelProcess(tmp_path_factory.mktemp("locked"), server.port,
                            password=SENTINEL_PASSWORD, master_password=MASTER_PASSWORD)
    except BaseException:
        server.cleanup()
        raise
    yield server, s
    s.stop()
    server.cleanup()


def make(**kw) -> Settings:
    return Settings(_env_file=None, sdkappid=SDKAPPID, secret_key=SECRET, **kw)


# --- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "sentinel://s1:26379",
    "sentinel://:pw@s1:26379/2",
    "sentinel://user:pw@s1/0",
    "SENTINEL://s1:26380",
    "sentinel://s1:26379;sentinel://s2:26380;sentinel://s3",
    "sentinel://:pw@s1:26379/1;sentinel://:pw@s2:26379/1",
])
def test_settings_take_a_sentinel_url_with_a_master_name(url):
    s = make(redis_url=url, sentinel_master=MASTER)
    assert s.redis_url == url and s.state_url == url and s.sentinel_master == MASTER
    state = make(state_redis_url=url, sentinel_master=MASTER)
    assert state.state_url == url and state.redis_url != url


def test_a_sentinel_url_is_parsed_as_kombu_parses_it():
    parsed = parse_sentinel_url("sentinel://u:p%40ss@s1:26380/3;sentinel://u:p%40ss@s2/3")
    assert parsed.nodes == (("s1", 26380), ("s2", SENTINEL_PORT))
    assert (parsed.username, parsed.password, parsed.db) == ("u", "p@ss", 3)
    assert parse_sentinel_url("sentinel://s1").db == 0


@pytest.mark.parametrize("field", ["redis_url", "state_redis_url"])
def test_a_sentinel_url_without_a_master_name_is_refused(field):
    for master in (None, "", "  "):
        with pytest.raises(ValidationError) as err:
            make(**{field: "sentinel://s1:26379"}, sentinel_master=master)
        first = err.value.errors()[0]
        assert first["loc"] == ("sentinel_master",) and first["type"] == "missing"
        assert f"SCORER_{field.upper()}" in first["ctx"]["because"]


def test_the_master_name_is_ignored_without_a_sentinel():
    s = make(redis_url="redis://localhost:6379/0", sentinel_master=MASTER)
    assert s.redis_url == "redis://localhost:6379/0"
    assert make().sentinel_master is None


@pytest.mark.parametrize("url,why", [
    ("sentinel://s1:26379;redis://r:6379", "every URL"),
    ("sentinel://s1:26379; sentinel://s2:26379", "spaces"),
    ("sentinel://s1:26379;", "empty"),
    ("sentinel://:a@s1:26379;sentinel://:b@s2:26379", "same"),
    ("sentinel://s1:26379/0;sentinel://s2:26379/1", "same"),
    ("sentinel://s1:26379/x", "database"),
    ("sentinel://s1:99999", "port"),
    ("sentinel://s1:0", "port"),
    ("sentinel://:26379", "host"),
    ("sentinel://s1:26379/0?ssl_cert_reqs=none", "options"),
])
def test_a_malformed_sentinel_url_is_refused(url, why):
    with pytest.raises(ValidationError) as err:
        make(redis_url=url, sentinel_master=MASTER)
    assert why in str(err.value)


def test_a_missing_master_name_stops_with_one_line(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    proc = subprocess.run([sys.executable, "-m", "worker.doors.cli", "check-config"],
                          env={**clean, "SCORER_SDKAPPID": "1", "SCORER_SECRET_KEY": "k",
                               "SCORER_REDIS_URL": "sentinel://:hunter2@s1:26379",
                               "PYTHONPATH": str(ROOT)},
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and lines == [(
        "configuration error: SCORER_SENTINEL_MASTER is required but not set:"
        " SCORER_REDIS_URL is a sentinel:// URL: give the name of the master its Sentinels"
        " monitor")], proc.stderr
    assert "hunter2" not in proc.stderr


def _celery_conf(tmp_path, **env) -> dict:
    """The broker settings worker.doors.celeryconfig computes for `env` (in a fresh process)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    code = ("import json, worker; c = worker.app.conf; "
            "print(json.dumps([c.broker_url, c.broker_transport_options], default=repr))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60,
                          env={**clean, "PYTHONPATH": str(ROOT),
                               **{f"SCORER_{k.upper()}": v for k, v in env.items()}})
    assert proc.returncode == 0, proc.stderr
    url, options = json.loads(proc.stdout)
    return {"url": url, **options}


def test_celery_config_names_the_master_and_keeps_its_options(tmp_path):
    conf = _celery_conf(tmp_path, redis_url="sentinel://:mpw@s1:26379;sentinel://:mpw@s2:26379",
                        sentinel_master=MASTER)
    assert conf["url"] == "sentinel://:mpw@s1:26379;sentinel://:mpw@s2:26379"
    assert conf["master_name"] == MASTER
    assert conf["visibility_timeout"] == 180 and conf["health_check_interval"] == 10
    # The URL's password is the master's: kombu gives it to the master, never to the Sentinels.
    assert "password" not in conf["sentinel_kwargs"]
    assert conf["sentinel_kwargs"]["socket_timeout"] > 0
    locked = _celery_conf(tmp_path, redis_url="sentinel://s1:26379", sentinel_master=MASTER,
                          sentinel_password="spw")
    assert locked["sentinel_kwargs"]["password"] == "spw"
    plain = _celery_conf(tmp_path, redis_url="redis://r:6379/0", sentinel_master=MASTER)
    assert "master_name" not in plain and "sentinel_kwargs" not in plain


# --- connect -----------------------------------------------------------------------------------

def test_connect_through_the_sentinel_reaches_the_master(sentinel, master):
    from worker.engine.runtime import connect

    client = connect(sentinel.url(db=3), MASTER)
    listed = connect(sentinel.listed(db=3, dead_first=True), MASTER)
    direct = redis.Redis(host="127.0.0.1", port=master.port, db=3, decode_responses=True)
    try:
        client.set("sentinel:probe", "through the sentinel")
        assert client.get("sentinel:probe") == "through the sentinel"  # decoded, as for redis://
        assert direct.get("sentinel:probe") == "through the sentinel"  # on the master, db 3
        assert listed.get("sentinel:probe") == "through the sentinel"  # past a dead Sentinel
        with pytest.raises(ValueError, match="SCORER_SENTINEL_MASTER"):
            connect(sentinel.url(), None)
    finally:
        direct.delete("sentinel:probe")
        direct.close()
        client.close()
        listed.close()


def test_the_runtime_reaches_state_and_broker_through_the_sentinel(sentinel, master):
    from worker.engine.runtime import build_runtime

    settings = make(api_url="http://127.0.0.1:9", redis_url=sentinel.url(db=4),
                    state_redis_url=sentinel.url(db=5), sentinel_master=MASTER)
    rt = build_runtime(settings)
    direct = redis.Redis(host="127.0.0.1", port=master.port, decode_responses=True)
    try:
        rt.redis.set("sentinel:state", "s")
        rt.broker.set("sentinel:broker", "b")
        direct.select(5)
        assert direct.get("sentinel:state") == "s"
        direct.select(4)
        assert direct.get("sentinel:broker") == "b"
    finally:
        direct.flushall()
        direct.close()
        rt.client.close()


def test_metrics_and_the_beat_health_check_go_through_the_sentinel(sentinel, master):
    """The metrics process, `battle-scorer health beat` and the beat's publish hook use the
    quick client of worker/doors/metrics_http.py: it follows the Sentinel too."""
    from worker.doors import metrics, metrics_http

    settings = make(api_url="http://127.0.0.1:9", redis_url=sentinel.url(db=6),
                    sentinel_master=MASTER)
    state, broker = metrics_http.clients(settings)
    direct = redis.Redis(host="127.0.0.1", port=master.port, db=6, decode_responses=True)
    try:
        metrics.record_beat_publish(state, 1000.0)
        assert metrics.beat_publish_age(state, 1002.0) == 2.0
        assert direct.get(metrics.BEAT_PUBLISHED) == "1000.0" and broker is state
        names = {f.name for f in metrics.ScorerCollector(state, broker, "celery").collect()}
        assert "scorer_queue_depth" in names and "scorer_redis_up" in names
    finally:
        direct.flushdb()
        direct.close()
        state.close()


def test_passwords_reach_the_master_and_the_sentinels(locked, tmp_path):
    """The URL's password authenticates to the master and SCORER_SENTINEL_PASSWORD to the
    Sentinels, for `connect` and for kombu alike (celeryconfig's transport options)."""
    from worker.engine.runtime import connect

    server, s = locked
    url = s.url(db=1, password=MASTER_PASSWORD)
    client = connect(url, MASTER, SENTINEL_PASSWORD)
    direct = redis.Redis(host="127.0.0.1", port=server.port, db=1, password=MASTER_PASSWORD,
                         decode_responses=True)
    try:
        client.set("sentinel:locked", "ok")
        assert direct.get("sentinel:locked") == "ok"
        with pytest.raises(redis.ConnectionError):  # the Sentinels need their own password
            connect(url, MASTER).ping()
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
        code = ("import worker\n"
                "with worker.app.connection_for_write() as conn:\n"
                "    conn.ensure_connection(max_retries=3)\n"
                "    conn.default_channel.client.set('sentinel:kombu', 'ok')\n")
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60,
                              env={**clean, "PYTHONPATH": str(ROOT), "SCORER_REDIS_URL": url,
                                   "SCORER_SENTINEL_MASTER": MASTER,
                                   "SCORER_SENTINEL_PASSWORD": SENTINEL_PASSWORD})
        assert proc.returncode == 0, proc.stderr
        assert direct.get("sentinel:kombu") == "ok"
    finally:
        direct.flushdb()
        direct.close()
        client.close()


# --- end to end --------------------------------------------------------------------------------

ROOMS = {"st_r1": "st_o1", "st_r2": "st_o2"}
#: Gifts of the burst: enough to back the queue up past drain.THRESHOLD.
GIFTS = 300


@pytest.fixture
def stack(sentinel, master, sandbox, tmp_path, monkeypatch):
    """Worker and beat whose broker and state are the master, found through the Sentinel."""
    for k in list(os.environ):
        if k.startswith("SCORER_") and k not in ("SCORER_SDKAPPID", "SCORER_SECRET_KEY"):
            monkeypatch.delenv(k)
    direct = redis.Redis(host="127.0.0.1", port=master.port, decode_responses=True)
    direct.flushall()
    # kombu's list form (with a dead Sentinel last: the producer below, configured as kombu's
    # docs say, would spend redis-py's default retries on one listed first).
    settings = make(api_url=sandbox.url, redis_url=sentinel.listed(), sentinel_master=MASTER,
                    flush_interval=0.2, reconcile_interval=2)
    env = worker_env(settings, sentinel_master=MASTER)
    procs = Processes(env, tmp_path)
    try:
        procs.worker("worker", concurrency=2)
        procs.beat()
        # Ready: the control worker ticks, and the tick writes the ingest watermark through
        # the worker's own client (runtime.connect), i.e. through the Sentinel.
        wait_for(lambda: float(direct.hget(keys.INGEST_WATERMARK, "w") or 0) > 0, timeout=60,
                 what="the worker's first ticks through the Sentinel")
        yield settings, direct, tmp_path
    finally:
        procs.stop(30)
        direct.close()


def test_a_battle_is_scored_exactly_through_the_sentinel(stack, ctl):
    """Gifts sent through kombu's Sentinel transport are scored exactly once; a burst backs the
    queue up, so drains (the worker's own client on kombu's list) run through the Sentinel too."""
    settings, direct, logs = stack
    producer = Celery(broker=settings.redis_url)  # an app's producer, configured as kombu says
    producer.conf.broker_transport_options = {"master_name": MASTER}
    producer.conf.task_serializer = "json"
    start = time.time()
    bid = ctl.create_battle(ROOMS, 30_000, start=start)["BattleId"]
    producer.send_task("scorer.webhook",
                       kwargs={"body": start_body(bid, start, 30_000, ROOMS), "event_id": None})
    gifts = [(list(ROOMS)[n % 2], n % 17 + 1) for n in range(GIFTS)]
    ctl.count_gifts([{"RoomId": room, "To_Account": [ROOMS[room]], "From_Account": "v",
                      "Coins": coins, "Count": 1} for room, coins in gifts])
    truth = {room: 0 for room in ROOMS}
    # A drain holds a slot in the broker from its request to its end: watch for one.
    drained, done = threading.Event(), threading.Event()
    def watch() -> None:
        while not done.is_set() and not drained.is_set():
            if direct.zcard(keys.DRAIN_SLOTS):  # redis-py clients are thread-safe
                drained.set()
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    with producer.connection_for_write() as conn:
        for n, (room, coins) in enumerate(gifts):
            truth[room] += coins
            body = gift_body(room, ROOMS[room], coins)
            for _ in range(2 if n % 5 == 0 else 1):  # every fifth webhook delivered twice
                producer.send_task("scorer.webhook", connection=conn,
                                   kwargs={"body": body, "event_id": f"st-{n}"})
    try:
        wait_for(lambda: ctl.scores(bid) == truth, timeout=60, what=f"scores {truth}")
    finally:
        done.set()
        thread.join(5)
    # Everything settled (queue empty, nothing unacked, pending or in flight): then nothing
    # can still be scored twice.
    bk = keys.BattleKeys(bid)
    wait_for(lambda: not direct.llen("celery") and not direct.hlen("unacked")
             and not direct.exists(bk.pending) and not direct.exists(bk.inflight),
             timeout=30, what="the battle settled")
    assert ctl.scores(bid) == truth
    assert not direct.llen(keys.DEAD_LETTERS)
    assert drained.is_set(), "the burst never backed the queue up into a drain"
    producer.close()
    for name in ("worker.log", "beat.log"):
        assert SECRET not in (logs / name).read_text()
