"""Run configurations, one YAML per model setup (read by stream.config)."""
