"""TUF repositories on the daemon's side: where bundles are offered, how they are fetched."""
