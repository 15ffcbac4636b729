"""The control plane: store -> reconciler -> snapshots -> ADS, plus the REST API and the CA."""
