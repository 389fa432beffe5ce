# One image for every process of the system: the entrypoint is `imagingctl`, the command picks the
# process (`edge`, `relay`, `worker <domain>`, `migrate`, `seed-admin`, …). See docker-compose.yml.
#
#   docker build -t imaging-backend .
#   docker run --rm imaging-backend --help

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# builder: a virtualenv with the dependencies, then the project itself (non-editable)
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv \
 && pip install --upgrade pip

WORKDIR /src

# Dependencies first, read from pyproject.toml, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# Then the project: a regular (non-editable) install into the venv's site-packages, including the
# package data (migrations/script.py.mako, migrations/versions/*.py, workers/users/*.txt).
COPY README.md ./
COPY contracts ./contracts
COPY edge ./edge
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-deps . \
 && imagingctl --help > /dev/null \
 && python -c "import importlib.resources as r; assert r.files('migrations').joinpath('script.py.mako').is_file(); assert r.files('migrations').joinpath('versions').is_dir(); assert r.files('workers.users').joinpath('common_passwords.txt').is_file()"

# ---------------------------------------------------------------------------------------------
# runtime: the same Python, the venv, no build context, no compilers, a non-root user
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="imaging-backend" \
      org.opencontainers.image.description="Hospital imaging backend: RIS + PACS behind one API, every change streamed as an event"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    BLOB_DIR=/var/lib/imaging/blobs

RUN groupadd --system --gid 10001 imaging \
 && useradd --system --uid 10001 --gid imaging --home-dir /home/imaging --create-home \
        --shell /usr/sbin/nologin imaging \
 && mkdir -p /var/lib/imaging/blobs \
 && chown -R imaging:imaging /var/lib/imaging

# Same path as in the builder, so the venv's scripts (imagingctl) keep working shebangs.
COPY --from=builder /opt/venv /opt/venv

# No VOLUME instruction (it would leave an anonymous volume behind every one-shot container);
# compose mounts a named volume on BLOB_DIR, which starts out owned by the non-root user because
# Docker copies the image directory's ownership into an empty named volume.

WORKDIR /home/imaging
USER 10001:10001

# edge (HTTP API) and relay (SSE + WebSocket)
EXPOSE 5000 5006

ENTRYPOINT ["imagingctl"]
CMD ["--help"]
