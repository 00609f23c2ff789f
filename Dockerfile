# billnotify container image: build a wheel, install it into a slim runtime as a
# non-root user. Mount the config at /etc/billnotify and keep state on a volume:
#
#   docker build -t billnotify .
#   docker run -d --name billnotify -v billnotify-state:/var/lib/billnotify \
#     -v "$PWD/config.toml:/etc/billnotify/config.toml:ro" --env-file billnotify.env billnotify
#
# With a relative [service] state (the default "state.db") the state lives in the volume
# ($STATE_DIRECTORY). /healthz answers on [service].http inside the container; publish
# that port only behind authentication (it also serves /metrics).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/billnotify --create-home billnotify \
    && install -d -o root -g billnotify -m 0750 /etc/billnotify
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV STATE_DIRECTORY=/var/lib/billnotify \
    BILLNOTIFY_CONFIG=/etc/billnotify/config.toml \
    PYTHONUNBUFFERED=1
USER billnotify
WORKDIR /var/lib/billnotify
VOLUME ["/var/lib/billnotify"]
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["billnotify"]
CMD ["run"]
