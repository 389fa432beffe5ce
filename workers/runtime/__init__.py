"""The runtime every worker shares: topology, consumption, inbox, outbox, retries, shutdown.

Handlers never see AMQP; they are plain async functions `(payload, uow) -> result`.
"""
