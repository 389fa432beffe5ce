#!/usr/bin/env bash
# Make sure Postgres, Redis and RabbitMQ answer on localhost; start local ones that are down.
set -uo pipefail

pg_up()     { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
redis_up()  { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

wait_for() {  # name, check, seconds
  local name=$1 check=$2 limit=$3
  for ((i = 0; i < limit * 2; i++)); do
    $check && return 0
    sleep 0.5
  done
  echo "services: $name did not come up within ${limit}s" >&2
  return 1
}

status=0
if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    wait_for PostgreSQL pg_up 60 || status=1
  else
    echo "services: PostgreSQL is not answering on 127.0.0.1:5432; start it (e.g. docker compose up -d postgres)" >&2
    status=1
  fi
fi
if ! redis_up; then
  if command -v redis-server >/dev/null; then
    echo "services: starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    wait_for Redis redis_up 30 || status=1
  else
    echo "services: Redis is not answering on 127.0.0.1:6379; start it (e.g. docker compose up -d redis)" >&2
    status=1
  fi
fi
if ! rabbit_up; then
  if command -v rabbitmq-server >/dev/null; then
    echo "services: starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_for RabbitMQ rabbit_up 120 || status=1
    command -v rabbitmqctl >/dev/null && timeout 120 rabbitmqctl await_startup >/dev/null 2>&1
  else
    echo "services: RabbitMQ is not answering on 127.0.0.1:5672; start it (e.g. docker compose up -d rabbitmq)" >&2
    status=1
  fi
fi
exit $status
