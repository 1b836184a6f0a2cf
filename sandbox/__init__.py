"""How a driver gets a safe home: bundles, virtualenvs, spawning with limits, logs."""
