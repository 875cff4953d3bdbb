"""Starts generate_image and gives up after TIMEOUT seconds (official MCP Python SDK).

Usage: python_cancel_client.py URL TOKEN MODE TIMEOUT
Prints {"cancelled": true} when the call was abandoned.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(url: str, token: str, mode: str, timeout: float) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            try:
                await asyncio.wait_for(client.call_tool("generate_image", {"prompt": "never mind"}), timeout)
                print(json.dumps({"cancelled": False}))
            except (asyncio.TimeoutError, TimeoutError):
                await asyncio.sleep(0.5)  # let the cancellation reach the server
                print(json.dumps({"cancelled": True}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
