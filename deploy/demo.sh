#!/usr/bin/env bash
# nats-edge demo: a nats-server on 127.0.0.1:4223 (loopback only) and nats-edge in front of it
# on 127.0.0.1:4222, with deploy/demo.toml. Connect any NATS client to 127.0.0.1:4222.
# Ctrl-C stops nats-edge; nats-server is stopped with it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EDGE_PORT=4222
SERVER_PORT=4223

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

for port in "$EDGE_PORT" "$SERVER_PORT"; do
    if port_in_use "$port"; then
        echo "demo: 127.0.0.1:$port is already in use; stop whatever listens there first." >&2
        exit 1
    fi
done

# nats-server 2.15.1, unless it is already installed.
bash .ci/install

workdir="$(mktemp -d "${TMPDIR:-/tmp}/nats-edge-demo.XXXXXX")"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        echo "demo: stopping nats-server (pid $server_pid)" >&2
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "demo: starting nats-server on 127.0.0.1:$SERVER_PORT (log: $workdir/nats-server.log)" >&2
nats-server -a 127.0.0.1 -p "$SERVER_PORT" -l "$workdir/nats-server.log" &
server_pid=$!

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

echo "demo: building nats-edge (release)" >&2
cargo build --release --bin nats-edge

cat <<'HELP'

  nats-edge is starting on nats://127.0.0.1:4222, in front of nats-server on 127.0.0.1:4223.
  Connect any NATS client to the edge, for example:

    nats CLI (https://github.com/nats-io/natscli), in two terminals:
      nats -s nats://127.0.0.1:4222 sub '>'
      nats -s nats://127.0.0.1:4222 pub demo.hello 'hi through the edge'

    Python (pip install nats-py):
      import asyncio, nats
      async def main():
          nc = await nats.connect("nats://127.0.0.1:4222")
          sub = await nc.subscribe("demo.>")
          await nc.publish("demo.hello", b"hi through the edge")
          msg = await sub.next_msg(timeout=1)
          print(msg.subject, msg.data)
          await nc.close()
      asyncio.run(main())

    Rust (async-nats, tokio, futures):
      let client = async_nats::connect("127.0.0.1:4222").await?;
      let mut sub = client.subscribe("demo.>").await?;
      client.publish("demo.hello", "hi through the edge".into()).await?;
      println!("{:?}", futures::StreamExt::next(&mut sub).await);

  Press Ctrl-C to stop nats-edge and nats-server.

HELP

# In the foreground; the EXIT trap stops nats-server when nats-edge ends.
cargo run --release --bin nats-edge -- -c deploy/demo.toml
