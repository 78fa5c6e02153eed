"""A TCP proxy that adds a fixed delay to every chunk in both directions: Postgres "across a network".

    .venv/bin/python -m loadtest.pgproxy --listen 6543 --target 127.0.0.1:5432 --delay-ms 2

Each chunk is forwarded `delay` after it arrived, in order, without holding back the chunks behind it, so a
round trip costs two delays but throughput is not capped.
"""

import argparse
import asyncio
import contextlib


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def forward() -> None:
        while True:
            due, chunk = await queue.get()
            if not chunk:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.create_task(forward())
    try:
        while chunk := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, chunk))
    except ConnectionError:
        pass
    queue.put_nowait((0.0, b""))
    with contextlib.suppress(ConnectionError):
        await sender
    writer.close()


async def serve(listen_port: int, target_host: str, target_port: int, delay_ms: float) -> asyncio.Server:
    """Start the proxy; returns the server (close it to stop)."""
    delay = delay_ms / 1000

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(target_host, target_port)
        await asyncio.gather(
            _pipe(client_reader, upstream_writer, delay),
            _pipe(upstream_reader, client_writer, delay),
        )

    return await asyncio.start_server(handle, "127.0.0.1", listen_port)


def main() -> None:
    """Run the proxy until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--delay-ms", type=float, default=2.0)
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)

    async def run() -> None:
        server = await serve(args.listen, host, int(port), args.delay_ms)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
