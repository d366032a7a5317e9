"""queen-rbee: the orchestrator. Schedules jobs onto hives and workers, and is the one source of truth for live workers."""
