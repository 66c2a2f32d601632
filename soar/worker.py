"""The Temporal worker process: the incident workflow, its activities, and the outbox
sweeper that re-signals detections a crash left undispatched."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities import build_activities
from activities.context import ActivityContext
from soar.audit.seal import seal_forever
from soar.config import Settings
from soar.connectors import Notifier, NullNotifier, NullTicketing, Ticketing
from soar.db import make_async_engine, session_factory
from soar.hooks import HookClient
from soar.intake.service import redeliver_undispatched
from soar.policy import Playbook, default_playbook, load_playbook
from workflows.incident import IncidentWorkflow

log = logging.getLogger("soar.worker")


def load_policy(settings: Settings) -> Playbook:
    return load_playbook(settings.policy_file) if settings.policy_file else default_playbook()


def build_notifier(settings: Settings) -> Notifier:
    if not settings.slack_enabled:
        return NullNotifier()
    from approvals.slack import SlackNotifier

    return SlackNotifier(settings)


def build_ticketing(settings: Settings) -> Ticketing:
    if not settings.jira_enabled:
        return NullTicketing()
    from activities.tickets import JiraTicketing

    return JiraTicketing(settings)


def build_context(settings: Settings, database_url: str) -> ActivityContext:
    engine = make_async_engine(database_url)
    hook_secret = settings.hook_secret.get_secret_value() if settings.hook_secret else None
    return ActivityContext(
        factory=session_factory(engine),
        settings=settings,
        playbook=load_policy(settings),
        hooks=HookClient(settings.action_hooks, hook_secret),
        notifier=build_notifier(settings),
        ticketing=build_ticketing(settings),
    )


def make_worker(client: Client, ctx: ActivityContext, *, task_queue: str) -> Worker:
    extra = (
        {} if ctx.settings.workflow_sandbox else {"workflow_runner": UnsandboxedWorkflowRunner()}
    )
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[IncidentWorkflow],
        activities=build_activities(ctx),
        max_concurrent_activities=64,
        **extra,  # type: ignore[arg-type]
    )


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


async def run_worker(settings: Settings, database_url: str, client: Client) -> None:
    ctx = build_context(settings, database_url)
    worker = make_worker(client, ctx, task_queue=settings.temporal_task_queue)
    sweeper = asyncio.create_task(sweep_outbox(client, ctx))
    # The database seals the action log (orders and hashes it); this loop only asks it to.
    seal_stop = asyncio.Event()
    sealer = asyncio.create_task(seal_forever(ctx.factory, 0.2, stop=seal_stop))
    try:
        await worker.run()
    finally:
        sweeper.cancel()
        seal_stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sealer, timeout=5)  # seals once more on the way out
