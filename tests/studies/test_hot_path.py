"""The chat's hot path: database calls side by side on bounded connections, a pinned number of
queries and commits per turn, replies rendered once, token counts after the complete frame."""

import asyncio
import threading
import uuid

import psycopg
import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from studies import consumers, selectors
from studies.models import Message, ModelEndpoint
from studies.services import db, generation, turns
from tests.factories import ParticipantFactory, three_arm_study
from tests.studies.conftest import advance_to_chat, complete_reply
from tests.studies.test_consumer import frames_until, open_chat, send_turn, settled
from tests.studies.test_generation_routing import slots_snapshot

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def _own_keys(monkeypatch) -> None:
    monkeypatch.setattr(generation, "KEY_PREFIX", f"test-gen-{uuid.uuid4().hex}")


@pytest.fixture
def _fresh_executor():
    db.shutdown()
    yield
    db.shutdown()


# --- rendered once --------------------------------------------------------------------------


def test_a_reply_is_rendered_once_when_stored_and_reads_reuse_it(chatting, monkeypatch):
    started = turns.turn_start(participant_id=chatting.pk, text="Help me.", key=uuid.uuid4())
    complete_reply(started.assistant_message, text="Some **bold** words.")
    reply = Message.objects.get(pk=started.assistant_message.pk)
    assert reply.html == "<p>Some <strong>bold</strong> words.</p>\n"

    def never(text):
        raise AssertionError("a stored reply was rendered again")

    monkeypatch.setattr(selectors, "render_markdown", never)
    state = selectors.chat_state(participant_id=chatting.pk)
    assert state["messages"][-1]["html"] == reply.html


def test_a_reply_stored_before_html_was_kept_is_rendered_on_read(chatting):
    started = turns.turn_start(participant_id=chatting.pk, text="Help me.", key=uuid.uuid4())
    complete_reply(started.assistant_message, text="An *old* reply.")
    Message.objects.filter(pk=started.assistant_message.pk).update(html="")
    frame = selectors.message_frame(Message.objects.get(pk=started.assistant_message.pk))
    assert frame["html"] == "<p>An <em>old</em> reply.</p>\n"


def test_stored_html_stays_sanitised(chatting):
    started = turns.turn_start(participant_id=chatting.pk, text="Help me.", key=uuid.uuid4())
    complete_reply(started.assistant_message, text="<script>x()</script> [a](javascript:x())")
    html = Message.objects.get(pk=started.assistant_message.pk).html
    assert html.startswith("<p>&lt;script&gt;") and "<script" not in html and "href" not in html


async def test_the_complete_frame_carries_the_rendered_reply_and_the_counters(fake_model):
    _, comm = await open_chat(fake_model.base_url, min_turns=1, rating_every=0)
    await send_turn(comm)
    complete = (await frames_until(comm, {"complete"}))[-1]
    reply = await sync_to_async(Message.objects.get)(pk=complete["message"]["id"])
    assert complete["message"]["html"] == reply.html != ""
    assert (complete["status"], complete["completed_turns"], complete["rating_due"]) == (
        "chatting",
        1,
        None,
    )
    await settled()
    await comm.disconnect()


# --- token counts off the participant's path --------------------------------------------------


async def test_llama_cpp_counts_come_after_the_complete_frame_and_the_slot(fake_model):
    gate = fake_model.server.count_gate = asyncio.Event()  # the tokenizer is slow to answer
    participant, comm = await open_chat(fake_model.base_url, model="fake-llamacpp")
    await send_turn(comm)
    complete = (await frames_until(comm, {"complete"}))[-1]
    assert fake_model.server.stats.counts == 0  # the participant did not wait for the count
    reply = await sync_to_async(Message.objects.get)(pk=complete["message"]["id"])
    assert (reply.status, reply.completion_tokens, reply.usage_source) == ("complete", None, "none")
    endpoint_id = await sync_to_async(lambda: participant.condition.endpoint_id)()
    assert (await slots_snapshot(endpoint_id)).outstanding == {}  # released before counting

    gate.set()
    for _ in range(100):
        await asyncio.sleep(0.05)
        await sync_to_async(reply.refresh_from_db)()
        if reply.usage_source == "tokenize":
            break
    assert reply.usage_source == "tokenize"
    assert reply.completion_tokens == len(reply.content.split())
    assert reply.prompt_tokens and reply.prompt_tokens > 0
    await comm.disconnect()


async def test_counts_cut_short_by_a_stopping_process_are_logged_not_dropped_silently(
    fake_model, caplog
):
    fake_model.server.count_gate = asyncio.Event()  # the count is still waiting...
    _, comm = await open_chat(fake_model.base_url, model="fake-llamacpp")
    await send_turn(comm)
    complete = (await frames_until(comm, {"complete"}))[-1]
    assert generation.counting() == 1
    for task in list(generation._counting):  # ...when the process stops (its tasks cancelled)
        task.cancel()
    await settled()
    reply_id = complete["message"]["id"]
    assert any(
        r.levelname == "WARNING" and f"reply {reply_id}" in r.getMessage() for r in caplog.records
    ), caplog.text
    await comm.disconnect()


def test_late_counts_never_replace_counts_the_stream_carried(chatting):
    started = turns.turn_start(participant_id=chatting.pk, text="Help me.", key=uuid.uuid4())
    complete_reply(started.assistant_message)  # completion_tokens=2 from the stream
    args = {"prompt_tokens": 9, "completion_tokens": 9, "usage_source": "tokenize"}
    assert not turns.turn_usage_record(message_id=started.assistant_message.pk, **args)
    assert Message.objects.get(pk=started.assistant_message.pk).completion_tokens == 2


# --- no single database thread -----------------------------------------------------------------


async def test_database_calls_do_not_queue_behind_each_other(_fresh_executor):
    """A call that waits for another call to run finishes: they run on different threads."""
    other_ran = threading.Event()

    def waits_for_the_other() -> bool:
        return other_ran.wait(timeout=10)

    first = asyncio.ensure_future(db.run(waits_for_the_other))
    await db.run(other_ran.set)
    assert await asyncio.wait_for(first, timeout=10)


async def test_a_turn_does_not_wait_for_the_processs_thread_sensitive_thread(fake_model):
    """Sync views and the admin run on that one thread; a busy one must not hold up the chat."""
    _, comm = await open_chat(fake_model.base_url)
    release = threading.Event()
    busy = asyncio.ensure_future(sync_to_async(release.wait)(timeout=60))
    try:
        await send_turn(comm)
        frames = await frames_until(comm, {"complete"}, wait=20)
        assert [f["type"] for f in frames if f["type"] in ("ack", "complete")] == [
            "ack",
            "complete",
        ]
    finally:
        release.set()
        await busy
    await settled()
    await comm.disconnect()


def _others_connected(dbname: str) -> int:
    """Connections to the test database other than this one (a raw psycopg connection)."""
    dsn = {k: v for k, v in connection.get_connection_params().items() if k != "pool"}
    dsn.pop("cursor_factory", None)
    dsn.pop("context", None)
    with psycopg.connect(**dsn, application_name="probe") as raw:
        return raw.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name <> %s",
            [dbname, "probe"],
        ).fetchone()[0]


def test_many_concurrent_turns_hold_bounded_connections_and_leave_none_open(_fresh_executor):
    endpoint = ModelEndpoint.objects.create(
        name=f"ep-{uuid.uuid4().hex[:6]}", base_url="http://127.0.0.1:9/v1", served_model="fake"
    )
    study = three_arm_study(endpoint=endpoint)
    pids = [advance_to_chat(ParticipantFactory(study=study)).pk for _ in range(40)]
    dbname = connection.settings_dict["NAME"]
    connection.close()  # this thread's too: only the executor's are counted
    if connection.pool is not None:
        connection.close_pool()
    peak = []

    def turn(pid: int) -> None:
        consumers._start_turn(pid, "Help me write something.", uuid.uuid4())
        peak.append(_others_connected(dbname))

    async def burst() -> None:
        await asyncio.gather(*(db.run(turn, pid) for pid in pids))

    asyncio.run(burst())
    assert Message.objects.filter(participant_id__in=pids).count() == 80
    connection.close()
    assert max(peak) <= max(db.threads(), _pool_max())
    db.shutdown()
    if connection.pool is not None:
        connection.close_pool()
    assert _others_connected(dbname) == 0  # nothing left open: no idle thread, no pool


def _pool_max() -> int:
    pool = connections["default"].settings_dict.get("OPTIONS", {}).get("pool")
    return int(pool.get("max_size", 0)) if isinstance(pool, dict) else 0


# --- queries and commits per turn, pinned -----------------------------------------------------


class Commits:
    """Commits on this thread's connection: autocommit statements and atomic blocks."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        if not connection.in_atomic_block:
            self.count += 1
        return execute(sql, params, many, context)


@pytest.fixture
def counted(monkeypatch):
    commits = Commits()
    real_commit = connection.commit

    def commit() -> None:
        commits.count += 1
        real_commit()

    monkeypatch.setattr(connection, "commit", commit)
    with connection.execute_wrapper(commits):
        yield commits


def test_the_turn_path_runs_a_pinned_number_of_queries_and_commits(counted):
    participant = advance_to_chat(ParticipantFactory(study=three_arm_study(rating_every=0)))
    selectors.chat_state(participant_id=participant.pk)  # warm caches (content types, versions)
    counted.count = 0
    with CaptureQueriesContext(connection) as start:
        started, plan = consumers._start_turn(participant.pk, "Help me write.", uuid.uuid4())
    assert plan is not None and plan.message_id == started.assistant_message.pk
    reply_id = started.assistant_message.pk
    start_commits, counted.count = counted.count, 0
    with CaptureQueriesContext(connection) as checkpoint:
        assert turns.turn_checkpoint(message_id=reply_id, text="So far")
    checkpoint_commits, counted.count = counted.count, 0
    with CaptureQueriesContext(connection) as complete:
        complete_reply(started.assistant_message, text="Done.")
    complete_commits, counted.count = counted.count, 0
    with CaptureQueriesContext(connection) as state:
        selectors.chat_state(participant_id=participant.pk)
    queries = [len(q) for q in (start, checkpoint, complete, state)]
    # start: BEGIN, SAVEPOINT, lock, stats, 2 INSERTs, UPDATE, event, RELEASE, the plan's 2
    # SELECTs, COMMIT;
    # complete: BEGIN, 3 SELECTs (one locks), UPDATE, count, event, COMMIT; state: 3 SELECTs.
    assert queries == [12, 1, 8, 3], [[q["sql"][:80] for q in c] for c in (start, complete)]
    # A turn's commits: its start and its completion; each checkpoint is one more.
    assert (start_commits, checkpoint_commits, complete_commits) == (1, 1, 1)
