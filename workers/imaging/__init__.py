"""The imaging worker. Its domain comes with its own issue; today it declares its queues and
answers `imaging.ping`."""
