"""What hygiene does to each registered task: the dry-run view of ``taskhygiene check --tasks``.

For every task: how it is retried (attempts, countdowns, which exceptions), whether its final
failure becomes a dead letter, its time limits and queue, the watchdog's threshold, and in words
where that differs from what plain Celery did with the same task. A task that is not hygienic
yet is shown as fleet-wide hygiene (``Celery(task_cls=...)`` with a ``HygieneTask`` subclass)
would run it, so a team sees the migration before deploying it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any

from tenacity import wait_fixed

from celery_hygiene import conf
from celery_hygiene.failures.retry import (
    CELERY_DEFAULT_RETRY_DELAY,
    CELERY_MAX_RETRIES,
    RetryPolicy,
    celery_retries,
    wait_celery_backoff,
    wait_exponential_capped,
)
from celery_hygiene.task.routing import QueueSpec

# How a task gets its retries (TaskPlan.kind).
PLAIN = "plain Celery"  # not a HygieneTask: what task_cls would make of it is shown
CELERY_RETRIES = "hygienic, Celery's retries"  # task_cls / base=, no policy chosen
POLICY = "hygienic, hygiene policy"  # a decorator, or hygiene_retry= chosen

COUNTDOWNS_SHOWN = 4


@dataclass
class TaskPlan:
    name: str
    kind: str
    retries: str
    dead_letter: str
    time_limits: str
    queue: str
    watchdog_seconds: float
    differences: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(app: Any, tasks: list[Any], specs: dict[str, QueueSpec]) -> list[TaskPlan]:
    return [_plan_one(app, task, specs) for task in tasks]


def _plan_one(app: Any, task: Any, specs: dict[str, QueueSpec]) -> TaskPlan:
    from celery_hygiene.task.hygiene_task import HygieneTask, default_policy
    from celery_hygiene.worker.watchdog import threshold_for

    forever = default_policy().max_attempts
    differences: list[str] = []
    if not isinstance(task, HygieneTask):
        kind = PLAIN
        celery = celery_retries(task, forever_attempts=forever)
        policy, cap = celery.policy, celery.retry_cap
        differences.extend(celery.differences)
        dead_letter = "none today; with task_cls: a dead letter after the final failure"
    elif task.hygiene_retry is None:
        kind = CELERY_RETRIES
        celery = task.celery_retries()
        policy, cap = celery.policy, celery.retry_cap
        differences.extend(celery.differences)
        dead_letter = "yes, after the final failure"
    else:
        kind = POLICY
        policy, cap = task.hygiene_policy(), task._retry_cap()
        differences.extend(_policy_vs_celery(task, policy, forever))
        dead_letter = "yes, after the final failure"
    if getattr(task, "throws", ()):
        names = ", ".join(c.__name__ for c in task.throws)
        differences.append(
            f"throws=({names}): Celery logs these as expected failures; their final failure is "
            "a dead letter too"
        )
    queue = _queue_of(app, task)
    return TaskPlan(
        name=task.name,
        kind=kind,
        retries=describe(policy, cap),
        dead_letter=dead_letter,
        time_limits=_time_limits(app, task, specs.get(queue)),
        queue=queue,
        watchdog_seconds=threshold_for(task),
        differences=differences,
    )


def describe(policy: RetryPolicy, retry_cap: int) -> str:
    """``policy`` in words: which exceptions, how many attempts, which countdowns."""
    body = f"self.retry(): up to {retry_cap} retr{'y' if retry_cap == 1 else 'ies'}"
    if not policy.retry_on or policy.max_attempts <= 1:
        return f"no automatic retry (a failure is final); {body}"
    on = _names(policy.retry_on)
    unless = f" except {_names(policy.give_up_on)}" if policy.give_up_on else ""
    return (
        f"on {on}{unless}: up to {policy.max_attempts} attempts, countdowns "
        f"{_countdowns(policy)}; {body}"
    )


def _names(classes: tuple[type[BaseException], ...]) -> str:
    return ", ".join(c.__name__ for c in classes)


def _countdowns(policy: RetryPolicy) -> str:
    wait = policy.wait
    retries = min(COUNTDOWNS_SHOWN, policy.max_attempts - 1)

    def clamp(seconds: float) -> float:
        return min(policy.max_delay, max(policy.min_delay, seconds))

    if isinstance(wait, wait_fixed):
        return f"{_s(clamp(float(wait.wait_fixed)))} each"
    if isinstance(wait, wait_celery_backoff):
        values = [clamp(min(wait.maximum, wait.factor * 2**n)) for n in range(retries)]
        jitter = " (full jitter: a random 0..n)" if wait.full_jitter else ""
        return _listed(values, policy) + jitter
    if isinstance(wait, wait_exponential_capped):
        values = [clamp(min(wait.max, wait.multiplier * 2**n)) for n in range(retries)]
        jitter = f" (+ up to {_s(wait.jitter)} jitter)" if wait.jitter else ""
        return _listed(values, policy) + jitter
    return f"{wait!r} (clamped to {_s(policy.min_delay)}..{_s(policy.max_delay)})"


def _listed(values: list[float], policy: RetryPolicy) -> str:
    more = ", ..." if policy.max_attempts - 1 > len(values) else ""
    return ", ".join(_s(v) for v in values) + more


def _s(seconds: float) -> str:
    return f"{seconds:g}s"


def _policy_vs_celery(task: Any, policy: RetryPolicy, forever: int) -> list[str]:
    """Where a chosen policy retries otherwise than plain Celery did with the task's options."""
    options = getattr(task, "hygiene_celery_options", None)
    # A decorator removed the options it translated and kept them aside; hygiene_retry= on a
    # task_cls/base= task leaves them on the task.
    source: Any = task
    if options is not None:
        source = SimpleNamespace(
            **{
                "max_retries": CELERY_MAX_RETRIES,
                "default_retry_delay": CELERY_DEFAULT_RETRY_DELAY,
                **options,
            }
        )
    celery = celery_retries(source, forever_attempts=forever).policy
    notes: list[str] = []
    if policy.retry_on and not celery.retry_on:
        notes.append(
            f"retries {_names(policy.retry_on)} automatically; plain Celery with these options "
            "retried only on an explicit self.retry() (no autoretry_for)"
        )
    elif set(policy.retry_on) != set(celery.retry_on):
        notes.append(
            f"retries on {_names(policy.retry_on)}; plain Celery retried on "
            f"{_names(celery.retry_on)}"
        )
    if celery.retry_on and policy.max_attempts != celery.max_attempts:
        notes.append(f"{policy.max_attempts} attempts; plain Celery made {celery.max_attempts}")
    return notes


def _queue_of(app: Any, task: Any) -> str:
    try:
        route = app.amqp.router.route({}, task.name, (), {})
        queue = route.get("queue")
        return str(getattr(queue, "name", None) or queue or app.conf.task_default_queue)
    except Exception:  # noqa: BLE001 - a user router failing on an empty call: the default
        return str(app.conf.task_default_queue)


def _time_limits(app: Any, task: Any, spec: QueueSpec | None) -> str:
    soft = _tighter(task.soft_time_limit or app.conf.task_soft_time_limit, spec, "soft")
    hard = _tighter(task.time_limit or app.conf.task_time_limit, spec, "hard")
    if not soft and not hard:
        return "none (W020)"
    parts = [f"soft {_s(soft)}" if soft else "no soft", f"hard {_s(hard)}" if hard else "no hard"]
    return ", ".join(parts)


def _tighter(own: float | None, spec: QueueSpec | None, which: str) -> float | None:
    queue = None
    if spec is not None:
        queue = spec.soft_time_limit if which == "soft" else spec.time_limit
    limits = [float(v) for v in (own, queue) if v]
    return min(limits) if limits else None


def render(plans: list[TaskPlan]) -> str:
    """The plans as text: one block per task, then a one-line summary."""
    lines: list[str] = []
    for p in plans:
        lines.append(f"{p.name}  [{p.kind}]")
        lines.append(f"  retries:     {p.retries}")
        lines.append(f"  dead letter: {p.dead_letter}")
        lines.append(f"  time limits: {p.time_limits}; queue {p.queue!r}")
        lines.append(f"  watchdog:    flags runs over {_s(p.watchdog_seconds)}")
        lines.extend(f"  ! differs from Celery: {note}" for note in p.differences)
    counts = {kind: sum(p.kind == kind for p in plans) for kind in (PLAIN, CELERY_RETRIES, POLICY)}
    differing = sum(bool(p.differences) for p in plans)
    lines.append(
        f"{len(plans)} task(s): {counts[PLAIN]} plain Celery (shown as task_cls would run them), "
        f"{counts[CELERY_RETRIES]} hygienic with Celery's retries, {counts[POLICY]} with a "
        f"hygiene policy; {differing} differ from plain Celery."
    )
    return "\n".join(lines)


def setting_note() -> str:
    """Where the default policy comes from, for the view's header."""
    from celery_hygiene.task.hygiene_task import default_policy

    policy = default_policy()
    configured = conf.get("DEFAULT_RETRY_POLICY") is not None
    source = "CELERY_HYGIENE['DEFAULT_RETRY_POLICY']" if configured else "built-in"
    return (
        "What hygiene does to each task (dry run). The decorators' default policy "
        f"({source}): {describe(policy, policy.max_attempts - 1)}. Tasks that chose no policy "
        "(task_cls, base=) keep Celery's retries."
    )
