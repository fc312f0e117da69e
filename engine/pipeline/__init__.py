"""The migration pipeline, one module per stage.

read -> plan -> fetch -> merge -> put (per contact) | bulk (activities) -> record;
`run.migrate` wires them, `dryrun.plan_migration` plans without writing.
"""
