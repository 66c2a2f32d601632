"""The composition root of atlas-soar: where the core package (`soar`) is wired to the outer
layers (`workflows`, `activities`, `approvals`) into the processes that run:

- `atlas_soar.worker`: the Temporal workers (the incident workflow and its activities with
  their connectors) and the outbox sweeper;
- `atlas_soar.app`: the HTTP API with the web UI and the Slack routes;
- `atlas_soar.cli`: the `soar` command (`python -m atlas_soar`), the core commands of
  `soar.cli` plus `up`, `worker`, `api` and `users`.

Nothing in `soar` imports this package; it imports everything."""
