"""run-config-clients: a Flower App whose ClientApps follow run_config and node_config."""
