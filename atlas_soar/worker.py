"""The Temporal worker process: the incident workflow, its activities, and the outbox
sweeper that re-signals detections a crash left undispatched."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities import build_activities, build_external_activities
from activities.context import ActivityContext
from approvals.channels import configured_channels
from soar.audit.seal import seal_forever
from soar.config import Settings
from soar.connectors import Notifier, NullNotifier, NullTicketing, Ticketing
from soar.db import make_async_engine, session_factory
from soar.decisions import decision_keys, install_keys
from soar.hooks import HookClient
from soar.intake.service import redeliver_undispatched
from soar.observability.serve import serve_worker_metrics
from soar.policy import Playbook, default_playbook, load_playbook
from soar.stack.lifecycle import run_until_stopped
from soar.summaries import build_summariser
from workflows.incident import IncidentWorkflow

log = logging.getLogger("soar.worker")


def load_policy(settings: Settings) -> Playbook:
    return load_playbook(settings.policy_file) if settings.policy_file else default_playbook()


def build_notifier(settings: Settings) -> Notifier:
    if not settings.slack_enabled:
        return NullNotifier()
    from approvals.slack import SlackChannel

    return SlackChannel(settings)


def build_ticketing(settings: Settings) -> Ticketing:
    if not settings.jira_enabled:
        return NullTicketing()
    from activities.tickets import JiraTicketing

    return JiraTicketing(settings)


def build_context(settings: Settings, database_url: str) -> ActivityContext:
    engine = make_async_engine(database_url)
    hook_secret = settings.hook_secret.get_secret_value() if settings.hook_secret else None
    factory = session_factory(engine)
    return ActivityContext(
        factory=factory,
        settings=settings,
        playbook=load_policy(settings),
        hooks=HookClient(settings.action_hooks, hook_secret),
        notifier=build_notifier(settings),
        ticketing=build_ticketing(settings),
        channels=configured_channels(settings, factory),
        summariser=build_summariser(settings, factory),
    )


CORE, EXTERNAL = "core", "external"
QUEUES = (CORE, EXTERNAL)


class WorkerGroup:
    """The Workers of one process: `core` (the incident workflow and every activity, on the
    main task queue) and/or `external` (the Slack / Jira / hook steps, on the external
    queue), each with its own activity slots. Used like one Worker: `async with` or
    `run()`."""

    def __init__(self, workers: dict[str, Worker]) -> None:
        self.workers = workers
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def core(self) -> Worker | None:
        return self.workers.get(CORE)

    @property
    def external(self) -> Worker | None:
        return self.workers.get(EXTERNAL)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for w in self.workers.values():
                tg.create_task(w.run())

    async def shutdown(self) -> None:
        await asyncio.gather(*(w.shutdown() for w in self.workers.values()))

    async def __aenter__(self) -> WorkerGroup:
        stack = contextlib.AsyncExitStack()
        try:
            for w in self.workers.values():
                await stack.enter_async_context(w)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()


def parse_queues(value: str | Sequence[str]) -> tuple[str, ...]:
    """`"core,external"` (the CLI's --queues) or a sequence: the kinds, validated."""
    items = value.split(",") if isinstance(value, str) else list(value)
    kinds = tuple(dict.fromkeys(q.strip().lower() for q in items if q.strip()))
    bad = [q for q in kinds if q not in QUEUES]
    if bad or not kinds:
        raise ValueError(f"queues: expected a list of {', '.join(QUEUES)}, got {value!r}")
    return kinds


def make_worker(
    client: Client,
    ctx: ActivityContext,
    *,
    task_queue: str | None = None,
    queues: str | Sequence[str] = QUEUES,
    external_task_queue: str | None = None,
) -> WorkerGroup:
    """The Workers for `queues` (default both, in this process on one client).

    `task_queue` defaults to the settings' main queue; `external_task_queue` to the
    settings' external queue (`<task queue>-external` when that is not set)."""
    s = ctx.settings
    kinds = parse_queues(queues)
    core_queue = task_queue or s.temporal_task_queue
    if external_task_queue is None:
        external_task_queue = (
            s.external_task_queue
            if core_queue == s.temporal_task_queue
            else f"{core_queue}-external"
        )
    workers: dict[str, Worker] = {}
    if CORE in kinds:
        install_keys(decision_keys(s))  # what the decide validator verifies decisions with
        extra = {} if s.workflow_sandbox else {"workflow_runner": UnsandboxedWorkflowRunner()}
        workers[CORE] = Worker(
            client,
            task_queue=core_queue,
            workflows=[IncidentWorkflow],
            activities=build_activities(ctx),
            max_concurrent_activities=s.core_max_concurrent_activities,
            graceful_shutdown_timeout=timedelta(seconds=s.worker_shutdown_grace_seconds),
            **extra,  # type: ignore[arg-type]
        )
    if EXTERNAL in kinds and (CORE not in kinds or external_task_queue != core_queue):
        workers[EXTERNAL] = Worker(
            client,
            task_queue=external_task_queue,
            activities=build_external_activities(ctx),
            max_concurrent_activities=s.external_max_concurrent_activities,
            graceful_shutdown_timeout=timedelta(seconds=s.worker_shutdown_grace_seconds),
        )
    return WorkerGroup(workers)


async def sweep_outbox(client: Client, ctx: ActivityContext, *, every: float = 5.0) -> None:
    s = ctx.settings
    while True:
        with contextlib.suppress(Exception):
            await redeliver_undispatched(
                ctx.factory,
                client,
                task_queue=s.temporal_task_queue,
                older_than=timedelta(seconds=10),
                correlation_window_seconds=s.correlation_window_seconds,
                approval_timeout_seconds=s.approval_timeout_seconds,
            )
        await asyncio.sleep(every)


async def run_worker(
    settings: Settings,
    database_url: str,
    client: Client,
    *,
    queues: str | Sequence[str] = QUEUES,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the workers of `queues` ("core", "external", or both: the default) until
    cancelled, or until `stop` is set: then gracefully (in-flight activities get
    SOAR_WORKER_SHUTDOWN_GRACE_SECONDS, then are handed back). The outbox sweeper runs
    with the core worker."""
    kinds = parse_queues(queues)
    ctx = build_context(settings, database_url)
    group = make_worker(client, ctx, queues=kinds)
    metrics = serve_worker_metrics(settings)  # SOAR_WORKER_METRICS_PORT
    log.info(
        "worker queues: %s",
        ", ".join(f"{k}={w.task_queue}" for k, w in group.workers.items()),
    )
    sweeper = asyncio.create_task(sweep_outbox(client, ctx)) if CORE in kinds else None
    # The database seals the action log (orders and hashes it); this loop only asks it to.
    seal_stop = asyncio.Event()
    sealer = (
        asyncio.create_task(seal_forever(ctx.factory, 0.2, stop=seal_stop))
        if CORE in kinds
        else None
    )
    try:
        await (run_until_stopped(group.run(), stop, group.shutdown) if stop else group.run())
    finally:
        if metrics is not None:
            metrics.stop()
        if sweeper is not None:
            sweeper.cancel()
        if sealer is not None:
            seal_stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sealer, timeout=5)  # seals once more on the way out
