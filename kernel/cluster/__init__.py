"""A cluster of drivebayd nodes sharing resources through PostgreSQL (docs/cluster.md)."""
