"""The app's tabs, one module each: chat, hives, workers, models, jobs."""
