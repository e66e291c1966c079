# syntax=docker/dockerfile:1
# attestd, built the way attestd asks others to build: pinned builder, static
# stripped binary, distroless nonroot runtime, HEALTHCHECK, OCI labels.
# `make image` assembles the same image without a Docker engine (test/image).

ARG GO_VERSION=1.26.8
FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ARG REVISION=unknown
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath \
      -ldflags "-s -w -X github.com/attestd/attestd/cmd/attestd/app.version=${VERSION} -X github.com/attestd/attestd/cmd/attestd/app.commit=${REVISION}" \
      -o /out/attestd ./cmd/attestd && mkdir -p /out/data

# Pin by digest in release builds: --build-arg BASE=gcr.io/distroless/static-debian12:nonroot@sha256:…
ARG BASE=gcr.io/distroless/static-debian12:nonroot
FROM ${BASE}
ARG VERSION=dev
ARG REVISION=unknown
ARG BASE=gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="attestd" \
      org.opencontainers.image.description="Supply-chain gate between a staging registry and production" \
      org.opencontainers.image.source="https://github.com/attestd/attestd" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE}"
COPY --from=build /out/attestd /usr/local/bin/attestd
# The data dir must be writable by the nonroot user; mount a volume here.
COPY --from=build --chown=65532:65532 /out/data /var/lib/attestd
ENV ATTESTD_LISTEN=:8080 ATTESTD_DATA_DIR=/var/lib/attestd
VOLUME /var/lib/attestd
USER 65532:65532
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/attestd", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/attestd"]
CMD ["serve"]
