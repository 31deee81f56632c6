"""Pipelines (a job whose steps are jobs, ending in a guarded promotion) and the
maintenance policies that run them when a trigger fires."""
