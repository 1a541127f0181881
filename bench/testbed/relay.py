"""relay.py - a TCP relay that adds one-way delay (and jitter) in both
directions, for the testbed's links: this kernel has no netem, so delay
comes from here while bandwidth comes from tc tbf.

  relay.py serve LISTEN_HOST:PORT TARGET_HOST:PORT --delay-ms D [--jitter-ms J]
  relay.py selfcheck --delay-ms D [--jitter-ms J]

Every chunk read from one side is written to the other D ms (+- J) after it
arrived, never before an earlier chunk of the same direction: a link that
delays but never reorders, like a wire. `selfcheck` puts the relay in front
of an echo server on loopback and pings 1-byte messages through it: the
measured one-way delay (RTT / 2) must be the configured one within
max(2 ms, 10%), or it exits 1."""
import argparse
import asyncio
import random
import statistics
import sys
import time


async def pump(reader, writer, delay_s, jitter_s):
    """Copies reader to writer, each chunk due delay +- jitter after it was
    read, in order."""
    queue = asyncio.Queue()

    async def send():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass

    sender = asyncio.ensure_future(send())
    last = 0.0
    try:
        while True:
            data = await reader.read(65536)
            due = max(last, time.monotonic() + delay_s + random.uniform(-jitter_s, jitter_s))
            last = due
            await queue.put((due, data or None))
            if not data:
                break
    except (ConnectionError, OSError):
        await queue.put((last, None))
    try:
        await sender
    except (ConnectionError, OSError):
        pass


async def handle(client_r, client_w, target, delay_s, jitter_s):
    host, port = target
    try:
        up_r, up_w = await asyncio.open_connection(host, port)
    except OSError:
        client_w.close()
        return
    await asyncio.gather(pump(client_r, up_w, delay_s, jitter_s), pump(up_r, client_w, delay_s, jitter_s))
    for w in (up_w, client_w):
        w.close()


def addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


async def serve(listen, target, delay_s, jitter_s, ready=None):
    server = await asyncio.start_server(lambda r, w: handle(r, w, target, delay_s, jitter_s), *listen)
    if ready:
        ready(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


async def selfcheck(delay_ms, jitter_ms, pings=40):
    async def echo(r, w):
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    echo_srv = await asyncio.start_server(echo, "127.0.0.1", 0)
    echo_port = echo_srv.sockets[0].getsockname()[1]
    port = asyncio.get_running_loop().create_future()
    relay = asyncio.ensure_future(serve(("127.0.0.1", 0), ("127.0.0.1", echo_port), delay_ms / 1e3, jitter_ms / 1e3,
                                        port.set_result))
    r, w = await asyncio.open_connection("127.0.0.1", await port)
    rtts = []
    for _ in range(pings):
        t0 = time.monotonic()
        w.write(b"x")
        await w.drain()
        await r.readexactly(1)
        rtts.append((time.monotonic() - t0) * 1e3)
    w.close()
    await w.wait_closed()
    # let the EOF travel through the relay and every handler end on its own
    await asyncio.sleep(2 * (delay_ms + jitter_ms) / 1e3 + 0.1)
    relay.cancel()
    echo_srv.close()
    one_way = statistics.median(rtts) / 2
    ok = abs(one_way - delay_ms) <= max(2.0, 0.1 * delay_ms)
    print("relay selfcheck: configured %.1f ms one way (jitter %.1f), measured %.2f ms (median of %d pings, "
          "min %.2f, max %.2f): %s" % (delay_ms, jitter_ms, one_way, pings, min(rtts) / 2, max(rtts) / 2,
                                      "ok" if ok else "OFF"))
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["serve", "selfcheck"])
    ap.add_argument("listen", nargs="?")
    ap.add_argument("target", nargs="?")
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    a = ap.parse_args()
    if a.jitter_ms > a.delay_ms:
        ap.error("--jitter-ms must not exceed --delay-ms")
    if a.cmd == "selfcheck":
        sys.exit(0 if asyncio.run(selfcheck(a.delay_ms, a.jitter_ms)) else 1)
    if not a.listen or not a.target:
        ap.error("serve needs LISTEN_HOST:PORT TARGET_HOST:PORT")
    asyncio.run(serve(addr(a.listen), addr(a.target), a.delay_ms / 1e3, a.jitter_ms / 1e3,
                      lambda p: print("relay listening on %s:%d" % (a.listen.rsplit(":", 1)[0], p), flush=True)))


if __name__ == "__main__":
    main()
