"""The contact migration engine: put contacts on Constant Contact lists (legacy v1 API)
without ever removing a membership they already have.

    async with Account(Credentials.from_env()) as account:
        report = await migrate(account, "contacts.csv", lists=["Newsletter"])
"""

from engine.audit import AuditFinding, AuditReport, audit
from engine.backend.v1 import (
    Account,
    Credentials,
    RateGovernor,
    RetryPolicy,
)
from engine.errors import (
    ApiError,
    ConfigError,
    EngineError,
    FatalApiError,
    PipelineError,
    RetryableApiError,
    SkippableApiError,
    SourceError,
)
from engine.pipeline.config import MigrationConfig, StageLimits
from engine.pipeline.dryrun import DryRunPlan, plan_migration
from engine.pipeline.models import Outcome
from engine.pipeline.read import ReadOptions
from engine.pipeline.run import MigrationReport, migrate
from engine.pipeline.stats import Progress

__all__ = [
    "Account",
    "ApiError",
    "AuditFinding",
    "AuditReport",
    "ConfigError",
    "Credentials",
    "DryRunPlan",
    "EngineError",
    "FatalApiError",
    "MigrationConfig",
    "MigrationReport",
    "Outcome",
    "PipelineError",
    "Progress",
    "RateGovernor",
    "ReadOptions",
    "RetryPolicy",
    "RetryableApiError",
    "SkippableApiError",
    "SourceError",
    "StageLimits",
    "audit",
    "migrate",
    "plan_migration",
]
