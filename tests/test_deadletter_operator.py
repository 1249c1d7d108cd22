"""Issue 10, "the operator at 3 a.m.": incident summary, audit trail, replay outcome, one time
zone, redaction, filters, and the report page's permission. Real PostgreSQL (and RabbitMQ where a
replay is published); the browser and WSGI-server parts are in test_deadletter_browser.py and
test_deadletter_wsgi.py."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import uuid

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from celery_hygiene.failures import history
from celery_hygiene.failures.deadletters import describe_failure, format_utc
from celery_hygiene.failures.redaction import MASK, redact
from celery_hygiene.failures.replay import ReplayState, replay_outcome
from celery_hygiene.models import ClaimStatus, DeadLetter, DeadLetterStatus, TaskClaim
from tests.test_deadletter_admin import CHANGELIST, detail_url, staff
from tests.test_deadletter_cli import RECORD, fetch, make, run, run_json

UTC = dt.UTC


def run_split(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("deadletter", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def history_of(pk: int) -> list[LogEntry]:
    return list(LogEntry.objects.filter(object_id=str(pk)).order_by("id"))


# -- incident summary ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_summary_groups_by_task_exception_and_reason():
    now = timezone.now()
    for minutes in (50, 30, 10):
        make(
            exception_type="requests.exceptions.ConnectTimeout",
            first_failed_at=now - dt.timedelta(minutes=minutes + 5),
            last_failed_at=now - dt.timedelta(minutes=minutes),
        )
    make(exception_type="requests.exceptions.ConnectTimeout", status="replayed")
    make(exception_type="ValueError", reason="gave_up")
    make(last_failed_at=now - dt.timedelta(days=3))  # outside --since 2h

    groups = run_json("summary", "--since", "2h", "--json")
    # One group per task x exception type x reason; the old one is outside --since.
    assert sorted((g["task_name"], g["exception_type"], g["reason"]) for g in groups) == [
        (RECORD, "ValueError", "gave_up"),
        (RECORD, "requests.exceptions.ConnectTimeout", "exhausted"),
    ]
    timeout = next(g for g in groups if g["exception_type"].endswith("ConnectTimeout"))
    assert set(timeout) == {
        "task_name",
        "exception_type",
        "reason",
        "count",
        "pending",
        "first_failed_at",
        "last_failed_at",
    }
    assert (timeout["count"], timeout["pending"]) == (4, 3)
    first = dt.datetime.fromisoformat(timeout["first_failed_at"])
    assert first.utcoffset() == dt.timedelta(0)
    assert abs(first - (now - dt.timedelta(minutes=55))) < dt.timedelta(seconds=1)

    table = run("summary", "--since", "2h")
    assert table.splitlines()[0].split()[:5] == ["COUNT", "PENDING", "TASK", "EXCEPTION", "REASON"]
    assert "5 dead letters (4 pending) in 2 groups since" in table and "UTC" in table
    assert "no dead letters since 2099-01-01 00:00:00 UTC" in run(
        "summary", "--since", "2099-01-01"
    )


@pytest.mark.django_db
def test_changelist_shows_the_summary_with_links_to_each_group(client: Client):
    make(exception_type="requests.exceptions.ConnectTimeout")
    make(exception_type="requests.exceptions.ConnectTimeout", status="discarded")
    make(task_name="tests.deadletter.always_fails", exception_type="KeyError", reason="gave_up")
    client.force_login(staff("viewer", "view_deadletter"))
    page = client.get(CHANGELIST).content.decode()
    start = page.index('id="incident-summary"')
    summary = page[start : page.index("</table>", start)]
    assert summary.count('class="incident"') == 2
    link = (
        "?task=tests.deadletter.record&amp;exception=requests.exceptions.ConnectTimeout"
        "&amp;reason__exact=exhausted"
    )
    assert link in summary
    group = client.get(CHANGELIST + link.replace("&amp;", "&")).content.decode()
    assert group.count("/change/") == 2  # both ConnectTimeouts, nothing else
    assert 'id="replay-all"' not in page  # a viewer cannot replay


# -- who did what --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_cli_actions_leave_history_entries_with_the_person(hygiene_app, queue_name):
    User.objects.create_user("ann")
    replayed, discarded = make(queue=queue_name), make()
    run("replay", str(replayed.pk), "--by", "ann")
    replayed.refresh_from_db()
    [entry] = history_of(replayed.pk)
    assert entry.user.username == "ann" and entry.is_change()
    assert entry.change_message == (
        f"Replay: sent as task {replayed.replayed_task_id} (by ann via manage.py deadletter)"
    )
    assert len(fetch(hygiene_app, queue_name)) == 1

    # An OS user with no Django account: an inactive service user owns the entry, which names them.
    run("discard", str(discarded.pk), "--by", "root-on-box-7")
    [entry] = history_of(discarded.pk)
    assert entry.user.username == "deadletter-cli" and not entry.user.is_active
    assert not entry.user.has_usable_password()
    assert entry.change_message == (
        "Discard: marked handled, not replayed (by root-on-box-7 via manage.py deadletter)"
    )
    # Default: the OS user running the command.
    other = make()
    run("discard", str(other.pk))
    assert (
        f"(by {history.os_user()} via manage.py deadletter)"
        in history_of(other.pk)[0].change_message
    )


@pytest.mark.django_db
def test_recover_is_recorded_and_keeps_the_replay_task_id():
    stuck = make(status=DeadLetterStatus.REPLAYING, replayed_task_id="lost-1")
    out = run("recover", str(stuck.pk), "--force", "--by", "bob")
    assert "never ran; pending again" in out
    stuck.refresh_from_db()
    assert (stuck.status, stuck.replayed_task_id) == ("pending", "lost-1")
    [entry] = history_of(stuck.pk)
    assert entry.change_message.startswith(f"Recover: dead letter {stuck.pk}: replay lost-1 never")
    assert "(by bob via manage.py deadletter)" in entry.change_message
    assert "replay lost-1 never ran" in run("show", str(stuck.pk))


@pytest.mark.django_db(transaction=True)
def test_admin_actions_show_in_history(operator, queue_name):
    replayed, discarded = make(queue=queue_name), make()
    stuck = make(status=DeadLetterStatus.REPLAYING, replayed_task_id="lost-2")
    for action, pk in (("replay_selected", replayed.pk), ("discard_selected", discarded.pk)):
        operator.post(CHANGELIST, {"action": action, "_selected_action": [pk], "post": "yes"})
    # A row stuck in replaying: replay says where to go; the Recover action settles it.
    page = operator.post(
        CHANGELIST,
        {"action": "replay_selected", "_selected_action": [stuck.pk], "post": "yes"},
        follow=True,
    ).content.decode()
    assert "stuck in replaying" in page
    detail = operator.get(detail_url(stuck.pk)).content.decode()
    assert 'id="recover-this"' in detail and 'id="replay-this"' not in detail
    page = operator.post(
        CHANGELIST, {"action": "recover_selected", "_selected_action": [stuck.pk]}, follow=True
    ).content.decode()
    # No claim can prove the lost replay was never sent: the admin refuses, the CLI has --force.
    assert "Not recovered" in page and "--force" in page
    TaskClaim.objects.create(
        entity="o-9",
        operation="charge",
        task_name=RECORD,
        status=ClaimStatus.RETRYING,
        fingerprint="f",
        owner_task_id="lost-2",
        attempts=0,
    )
    DeadLetter.objects.filter(pk=stuck.pk).update(entity="o-9", operation="charge")
    page = operator.post(
        CHANGELIST, {"action": "recover_selected", "_selected_action": [stuck.pk]}, follow=True
    ).content.decode()
    assert "never ran; pending again" in page

    for pk, verb in ((replayed.pk, "Replay"), (discarded.pk, "Discard"), (stuck.pk, "Recover")):
        [entry] = history_of(pk)
        assert entry.user.username == "oncall" and entry.change_message.startswith(f"{verb}: ")
        assert entry.change_message.endswith("(by oncall via admin)")
        history_page = operator.get(
            reverse("admin:celery_hygiene_deadletter_history", args=[pk])
        ).content.decode()
        assert f"{verb}: " in history_page and "oncall" in history_page


@pytest.fixture
def operator(hygiene_app) -> Client:
    client = Client()
    client.force_login(
        staff("oncall", "view_deadletter", "replay_deadletter", "discard_deadletter")
    )
    return client


# -- outcome of a replay -------------------------------------------------------------------------


@pytest.mark.django_db
def test_replay_outcome_failed_again_succeeded_running_and_unknown(viewer_client):
    failed = make(status="replayed", replayed_task_id="r-1")
    again = make(replay_of=failed, task_id="r-1", exception_type="KeyError")
    outcome = replay_outcome(failed)
    assert outcome.state is ReplayState.FAILED_AGAIN and outcome.dead_letter == again
    page = viewer_client.get(detail_url(failed.pk)).content.decode()
    assert "failed again: dead letter" in page and detail_url(again.pk) in page
    shown = json.loads(run("show", str(failed.pk), "--json"))
    assert (shown["replay_outcome"], shown["replayed_again_as"]) == ("failed_again", again.pk)

    def claimed(entity: str, status: str, owner: str, attempts: int = 1) -> DeadLetter:
        TaskClaim.objects.create(
            entity=entity,
            operation="op",
            task_name=RECORD,
            status=status,
            fingerprint="f",
            owner_task_id=owner,
            attempts=attempts,
            completed_at=timezone.now() if status == "succeeded" else None,
        )
        return make(status="replayed", replayed_task_id=owner, entity=entity, operation="op")

    ok = claimed("e-ok", ClaimStatus.SUCCEEDED, "r-2")
    assert replay_outcome(ok).state is ReplayState.SUCCEEDED
    assert "succeeded at" in run("show", str(ok.pk)) and " UTC" in run("show", str(ok.pk))
    assert "succeeded at" in viewer_client.get(detail_url(ok.pk)).content.decode()
    assert replay_outcome(claimed("e-run", ClaimStatus.RUNNING, "r-3")).state is ReplayState.RUNNING
    waiting = claimed("e-wait", ClaimStatus.RETRYING, "r-4", attempts=0)
    assert replay_outcome(waiting).text == "sent, not picked up by a worker yet"
    # No claim and nothing in the result backend for this id: sent, outcome unknown.
    plain = make(status="replayed", replayed_task_id=str(uuid.uuid4()))
    assert replay_outcome(plain).state is ReplayState.UNKNOWN
    assert make().replayed_task_id == "" and replay_outcome(make()).state is ReplayState.NONE


@pytest.fixture
def viewer_client() -> Client:
    client = Client()
    client.force_login(staff("auditor", "view_deadletter"))
    return client


@pytest.mark.django_db
def test_replaying_row_points_at_recover():
    stuck = make(status=DeadLetterStatus.REPLAYING, replayed_task_id="t-9")
    with pytest.raises(CommandError, match=rf"manage.py deadletter recover {stuck.pk}"):
        run("replay", str(stuck.pk))


# -- one time zone -------------------------------------------------------------------------------


@pytest.mark.django_db
@override_settings(TIME_ZONE="America/Chicago")
def test_times_are_utc_everywhere_whatever_the_server_zone(viewer_client):
    early = make(last_failed_at=dt.datetime(2026, 1, 10, 3, 0, 5, tzinfo=UTC))  # 21:00 CST, Jan 9
    make(last_failed_at=dt.datetime(2026, 1, 9, 23, 0, tzinfo=UTC))
    # A date is midnight UTC, not midnight in the server's zone (which would be 06:00 UTC).
    assert [row["id"] for row in run_json("list", "--json", "--since", "2026-01-10")] == [early.pk]
    item = run_json("show", str(early.pk), "--json")
    assert item["failed_at"] == "2026-01-10T03:00:05+00:00"
    assert "2026-01-10 03:00:05 UTC" in run("show", str(early.pk))
    page = viewer_client.get(detail_url(early.pk)).content.decode()
    assert "2026-01-10 03:00:05 UTC" in page and "CST" not in page
    listing = viewer_client.get(CHANGELIST).content.decode()
    assert "2026-01-10 03:00:05" in listing and "(UTC)" in listing
    assert " UTC would be purged" in run("purge", "--older-than", "1d", "--dry-run")
    assert "(UTC)" in run("list").splitlines()[0]
    report = io.StringIO()
    call_command("taskhygiene", "report", "--since", "2026-01-10", stdout=report)
    assert "2026-01-10 00:00:00 UTC" in report.getvalue() and "CST" not in report.getvalue()


# -- list and filters ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_list_says_when_it_stops_at_the_limit():
    for _ in range(53):
        make()
    out, err = run_split("list")
    assert len(out.splitlines()) == 51  # header + 50
    assert "showing the newest 50 of 53 matching dead letters; --limit 0 shows all" in err
    out, err = run_split("list", "--limit", "0")
    assert len(out.splitlines()) == 54 and err == ""


@pytest.mark.django_db
def test_entity_reason_and_task_glob_filters():
    a = make(entity="order-1", reason="timeout", task_name="tests.deadletter.always_fails")
    b = make(entity="order-2")
    c = make(task_name="tests.deadletter.charge_until_fixed", reason="worker_lost")

    def ids(*args: str) -> list[int]:
        return [row["id"] for row in run_json("list", "--json", *args)]

    assert ids("--entity", "order-1") == [a.pk]
    assert ids("--reason", "worker_lost") == [c.pk]
    assert ids("--task", "tests.deadletter.*") == [c.pk, b.pk, a.pk]
    assert ids("--task", "tests.deadletter.*_fail?") == [a.pk]
    assert ids("--task", "*.charge_*") == [c.pk]
    with pytest.raises(CommandError, match="no dead letters and no registered task match"):
        run("list", "--task", "shop.nothing.*")
    assert "dry run: 1 would be discarded" in run("discard", "--entity", "order-2", "--dry-run")
    run("discard", "--reason", "timeout")
    assert DeadLetter.objects.get(pk=a.pk).status == "discarded"


# -- display texts -------------------------------------------------------------------------------


def test_time_limit_and_worker_lost_read_plainly():
    assert describe_failure("billiard.exceptions.TimeLimitExceeded", "TimeLimitExceeded(8.0,)") == (
        "hard time limit of 8 s exceeded: the worker killed the process running it "
        "(no exception was raised in the task)"
    )
    lost = describe_failure(
        "billiard.exceptions.WorkerLostError",
        "shop.sync[ab12] was delivered 3 times without finishing (max_attempts=2); the worker "
        "running it was lost each time (killed, out of memory, crashed).",
    )
    assert "delivered 3 times" not in lost
    assert lost == (
        "shop.sync[ab12] was not run again on delivery 3: its max_attempts=2 runs are used up "
        "and the worker running it was lost each time (killed, out of memory, crashed)."
    )
    assert describe_failure("ValueError", "bad\n  input") == "bad input"
    assert format_utc(dt.datetime(2026, 5, 1, 3, 4, 5, tzinfo=UTC)) == "2026-05-01 03:04:05 UTC"


@pytest.mark.django_db
def test_admin_and_cli_explain_a_hard_time_limit(viewer_client):
    dl = make(
        exception_type="billiard.exceptions.TimeLimitExceeded",
        exception_message="TimeLimitExceeded(8.0,)",
        reason="timeout",
    )
    assert "hard time limit of 8 s exceeded" in viewer_client.get(CHANGELIST).content.decode()
    assert "hard time limit of 8 s exceeded" in run("list")
    assert "explanation" in run("show", str(dl.pk))


# -- redaction -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "X-Api-Key",
        "apikey",
        "API_KEY",
        "private_key",
        "Private-Key",
        "passwd",
        "pwd",
        "DB_PASSWORD",
        "Cookie",
        "Set-Cookie",
        "credentials",
        "session",
        "sessionid",
        "Authorization",
        "cvc_token",
        "client_secret",
    ],
)
def test_default_redaction_catches_common_secret_names(key, settings):
    settings.CELERY_HYGIENE = {}
    assert redact({"headers": {key: "s3cr3t"}, "ok": "visible"}) == {
        "headers": {key: MASK},
        "ok": "visible",
    }


def test_redaction_stays_configurable(settings):
    settings.CELERY_HYGIENE = {"REDACT_KEYS": ["iban"]}
    assert redact({"IBAN": "DE00", "password": "shown"}) == {"IBAN": MASK, "password": "shown"}
    settings.CELERY_HYGIENE = {"REDACT_KEYS": []}
    assert redact({"password": "shown"}) == {"password": "shown"}


@pytest.mark.django_db
def test_redacted_headers_in_the_admin(viewer_client):
    dl = make(kwargs={"headers": {"X-Api-Key": "k-123", "Set-Cookie": "sid=abc"}})
    page = viewer_client.get(detail_url(dl.pk)).content.decode()
    assert "k-123" not in page and "sid=abc" not in page


# -- report page permission ----------------------------------------------------------------------


@pytest.mark.django_db
def test_run_statistics_report_needs_a_permission():
    report = reverse("admin:celery_hygiene_taskrunstats_changelist")
    client = Client()
    client.force_login(staff("nobody"))
    assert client.get(report).status_code == 403
    client.force_login(staff("watcher", "view_taskrunstats"))
    page = client.get(report, {"since": "1d"})
    assert page.status_code == 200
    assert re.search(r"Runs since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page.content.decode())


def test_secrets_inside_payload_text_are_masked(settings):
    """Payloads kept as text (truncated JSON, escaped JSON, repr) or string arguments that hold
    JSON or key=value pairs: the value after a sensitive key is masked, even when cut off."""
    settings.CELERY_HYGIENE = {}
    shown = redact(
        [
            '["x", {"password": "hunter2", "n": 1}]',
            "{'secret': 's3', 'o': <object>}",
            '{"Authorization": "Bearer abc',  # truncated inside the value
            json.dumps({"payload": json.dumps({"client_secret": "zz", "a": 1})}),
            "dsn=postgres://u:p@h/db&user=bob",
        ]
    )
    text = json.dumps(shown)
    for secret in ("hunter2", "s3'", "Bearer abc", "zz", "postgres://"):
        assert secret not in text
    assert '"n": 1' in shown[0] and "user=bob" in shown[4]
