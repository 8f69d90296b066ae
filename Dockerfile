# pecgate in a container: a static binary on distroless, run as a non-root
# user. Build and run:
#
#   docker build -t pecgate .
#   docker run -d --name pecgate \
#     -v /srv/pecgate/etc:/etc/pecgate:ro \
#     -v pecgate-state:/var/lib/pecgate \
#     -p 993:993 -p 143:143 -p 465:465 -p 587:587 -p 127.0.0.1:8080:8080 \
#     pecgate
#
# /etc/pecgate holds pecgate.toml and the files it names (certificates,
# admin.token, vault.key), readable by uid 65532. /var/lib/pecgate is the
# embedded store (the config's default store.path): keep it on a volume.
# Inside a container the admin API must listen on ":8080" to be reachable
# through -p, which needs admin.allow_non_loopback = true in pecgate.toml;
# publish it on the host's loopback only, as above.
# Docker lets unprivileged users bind ports below 1024 inside a container
# (net.ipv4.ip_unprivileged_port_start=0), so no capability is needed.
#
# Operator commands run in the same container, e.g.
#   docker exec -it pecgate pecgate status
#   docker exec -it pecgate pecgate route pec.ordine.example migrating
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/pecgate ./cmd/pecgate \
 && mkdir -p /out/empty

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pecgate /usr/local/bin/pecgate
# The state directory belongs to the non-root user, so a fresh volume
# mounted there starts writable.
COPY --from=build --chown=65532:65532 /out/empty /var/lib/pecgate
COPY --from=build --chown=65532:65532 /out/empty /etc/pecgate
VOLUME ["/etc/pecgate", "/var/lib/pecgate"]
# IMAPS, IMAP+STARTTLS, SMTPS, submission+STARTTLS, admin API and status
# page (publish it on loopback or a private network only).
EXPOSE 993 143 465 587 8080
USER 65532:65532
WORKDIR /var/lib/pecgate
ENTRYPOINT ["/usr/local/bin/pecgate"]
CMD ["serve", "-config", "/etc/pecgate/pecgate.toml"]
