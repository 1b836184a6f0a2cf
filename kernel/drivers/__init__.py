"""Driver versions and their processes: the child, its channel and deadlines, the
slot that supervises it through the lifecycle table, restarts, start order, the
registry of versions, the drivers directory and the handover between versions."""
