"""rbee-hive: one per machine. Keeps the model catalog, downloads models, spawns and watches workers."""
