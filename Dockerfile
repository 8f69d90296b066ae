# Multi-stage build: a static pecgate binary on a small base, run as a
# non-root user. Config in /etc/pecgate, state in /var/lib/pecgate.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/pecgate ./cmd/pecgate

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pecgate /usr/local/bin/pecgate
VOLUME ["/etc/pecgate", "/var/lib/pecgate"]
# IMAPS, IMAP+STARTTLS, SMTPS, submission+STARTTLS, admin (bind it to
# loopback or a private network only).
EXPOSE 993 143 465 587 8080
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/pecgate"]
CMD ["serve", "-config", "/etc/pecgate/pecgate.toml"]
