# syntax=docker/dockerfile:1
# The three PutPlace images from one build: docker build --target api|agent|operator .
# Each final image holds only its own dependency group in a venv, runs as a non-root user by
# default and needs no writable root filesystem (Kubernetes mounts /tmp and data volumes).
ARG PYTHON=python:3.11.14-slim-bookworm

# The venvs keep their bytecode (a read-only root cannot cache it) but not pip and setuptools,
# which nothing runs once the packages are installed (about 23 MB per image).
FROM ${PYTHON} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api api
COPY agent agent
COPY operator operator
RUN python -m venv /opt/api && /opt/api/bin/pip install ".[api]" \
    && python -m venv /opt/agent && /opt/agent/bin/pip install ".[agent]" \
    && python -m venv /opt/operator && /opt/operator/bin/pip install ".[operator]" \
    && for venv in /opt/api /opt/agent /opt/operator; do "$venv/bin/pip" uninstall --yes --quiet pip setuptools; done

FROM ${PYTHON} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin putplace
WORKDIR /tmp
USER 65532:65532

FROM runtime AS api
COPY --from=build /opt/api /opt/api
ENV PATH=/opt/api/bin:$PATH
EXPOSE 8000
CMD ["putplace-api"]

# The DaemonSet runs the agent as root with only CAP_DAC_READ_SEARCH, to read every host file.
FROM runtime AS agent
COPY --from=build /opt/agent /opt/agent
ENV PATH=/opt/agent/bin:$PATH
EXPOSE 9100
CMD ["putplace-agent", "--help"]

FROM runtime AS operator
COPY --from=build /opt/operator /opt/operator
ENV PATH=/opt/operator/bin:$PATH
EXPOSE 8080 9090
CMD ["putplace-operator"]
