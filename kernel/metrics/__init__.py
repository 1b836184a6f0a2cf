"""Prometheus metrics: what the kernel counts (``meters``), the exposition
(``exposition.render_metrics``), and the optional listener of ``metrics.listen``."""
