"""Calls generate_image with a progress callback (official MCP Python SDK).

Usage: python_progress_client.py URL TOKEN MODE
Prints one JSON object: the progress messages received and the result.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(url: str, token: str, mode: str) -> None:
    updates = []

    async def on_progress(progress, total, message):
        updates.append({"progress": progress, "message": message})

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            result = await client.call_tool("generate_image", {"prompt": "a slow sunrise"}, progress_callback=on_progress)
            print(json.dumps({"updates": updates, "is_error": result.is_error,
                              "structured": result.structured_content}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
