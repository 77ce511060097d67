"""Searches and studies on Ray Tune, and their reports from MLflow."""
