# syntax=docker/dockerfile:1
# One image with the three Spillway services; the container's command picks
# one: spillway-ingest (the default), spillway-forwarder, spillway-resender.
# Build from the repository root: docker build --build-arg VERSION=$(git describe) -t spillway .

FROM golang:1.26-bookworm AS build
WORKDIR /src
# Every module go.work names must be here, or the go command stops ("cannot
# load module ... listed in go.work file"); deploy/ holds only tests, so its
# go.mod and go.sum are enough. deploy/image_test.go runs this stage's build.
COPY go.work ./
COPY deploy/go.mod deploy/go.sum deploy/
COPY pkg/ pkg/
COPY proto/ proto/
COPY services/ services/
COPY tools/ tools/
ARG VERSION=dev
ENV CGO_ENABLED=0
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    for s in ingest forwarder resender; do \
      go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/spillway-$s ./services/$s || exit 1; \
    done

# distroless: no shell, no package manager; "nonroot" runs as uid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
EXPOSE 18080 18282 19092 28080 28081 28082
ENTRYPOINT ["/usr/local/bin/spillway-ingest"]
