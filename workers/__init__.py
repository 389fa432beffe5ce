"""Domain workers (users, patients, imaging, system) and the runtime they share."""
