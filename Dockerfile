# syntax=docker/dockerfile:1
#
# The shardfill image: a static binary on a distroless base that runs as a
# non-root user and needs no writable filesystem (see deploy/shardfill-job.yaml).
#
#   docker build --build-arg REVISION="$(git rev-parse HEAD)" -t registry.example.com/shardfill:v0.1.0 .
#   docker push registry.example.com/shardfill:v0.1.0   # prints the digest to pin in the Job
#
# .git stays out of the build context (.dockerignore), so the revision that
# `shardfill version` prints comes from REVISION.

FROM golang:1.26 AS build
WORKDIR /src
# Modules first: this layer is cached until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG REVISION=""
# Static (no cgo, so no libc in the runtime image), reproducible paths
# (-trimpath), no debug tables (-s -w).
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X main.buildRevision=${REVISION}" \
      -o /out/shardfill ./cmd/shardfill

# Pin this base by digest too in a release pipeline
# (gcr.io/distroless/static-debian12:nonroot@sha256:...).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/shardfill /usr/local/bin/shardfill
# 65532 is distroless's "nonroot"; numeric, so that runAsNonRoot can check it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/shardfill"]
CMD ["--help"]
