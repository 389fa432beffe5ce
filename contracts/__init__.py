"""Wire contracts shared by the edge, the relay and the workers: JSON, camelCase, msgspec."""
