"""Zoo entries shipped inside the wheel (mapped from the top-level zoo/ folder)."""
