"""soar.gateway: what an LLM application imports to use atlas-soar.

- `EnforcementClient`: a local replica of the blocks, fed by `GET /v1/enforcement/stream`;
  `is_blocked(kind, target, tenant)` is an in-process lookup (microseconds, no I/O).
- `DetectionReporter`: signs and posts detections, spooling them to a local file first so
  nothing is lost while atlas-soar is down; replays in order.
- `EnforcementMiddleware`: ASGI middleware refusing blocked subjects (403 + Retry-After) and
  reporting what an optional detector finds in the prompt.

Needs only httpx and, for the middleware, Starlette (both dependencies of atlas-soar).
"""

from soar.gateway.client import Decision, EnforcementClient
from soar.gateway.middleware import EnforcementMiddleware, Subject
from soar.gateway.reporter import DetectionReporter, make_detection
from soar.gateway.table import Block, BlockTable

__all__ = [
    "Block",
    "BlockTable",
    "Decision",
    "DetectionReporter",
    "EnforcementClient",
    "EnforcementMiddleware",
    "Subject",
    "make_detection",
]
