"""The users worker: staff accounts, sign-in and sessions, departments (spec users.md)."""
