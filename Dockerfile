# restic-manager server. Build: docker build -t restic-manager .
# Run:   docker run -p 8080:8080 -v rm-data:/data restic-manager
# The setup URL is printed in the container log on first start (docker logs <container>).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RM_DATA_DIR=/data

RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin restic-manager \
    && mkdir -p /data /opt/restic-manager \
    && chown restic-manager:restic-manager /data

WORKDIR /opt/restic-manager
# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml README.md ./
COPY app/__init__.py app/__init__.py
COPY agent/__init__.py agent/__init__.py
RUN pip install '.[server]' && pip uninstall -y restic-manager
COPY . .
# Editable install: templates/, static/ and migrations/ stay next to the code.
RUN pip install --no-deps -e . && python -m compileall -q app agent

USER restic-manager
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=4).status != 200)"
STOPSIGNAL SIGTERM
CMD ["restic-manager", "serve", "--bind", "0.0.0.0:8080"]
