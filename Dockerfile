# syntax=docker/dockerfile:1
# One image, three services: the command picks one (deploy/k8s sets it per Deployment):
#   python -m services.prober | python -m services.state | python -m services.gateway
#
# Base pinned by version and by digest (the multi-arch index of that tag). To move to a
# newer patch release: docker buildx imagetools inspect python:3.11.<n>-slim-bookworm
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/vigil
WORKDIR /src
COPY pyproject.toml README.md deploy/constraints.txt ./
COPY shared ./shared
COPY services ./services
# A regular (not editable) install: the code lands in the venv with its .pyc compiled
# now, so nothing is written at run time. pip and setuptools are not needed at run time.
# The dependencies are pinned (constraints.txt): the same tag builds the same image.
RUN /opt/vigil/bin/pip install -c constraints.txt . \
 && /opt/vigil/bin/pip uninstall -y pip setuptools

FROM ${PYTHON_IMAGE}
# The base image ships the standard library without .pyc: compile it once here, or
# every start would compile it again (and could not keep it: the root is read-only).
RUN python -m compileall -q -j 0 /usr/local/lib/python3.11
COPY --from=build /opt/vigil /opt/vigil
# PYTHONSAFEPATH: `python -m` does not put the working directory on sys.path.
ENV PATH=/opt/vigil/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /opt/vigil
# Numeric, so that Kubernetes' runAsNonRoot can check it without a passwd entry.
USER 10001:10001
EXPOSE 8000 9100
CMD ["python", "-m", "services.gateway"]
