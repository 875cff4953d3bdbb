"""Drives the gateway with the official MCP Python SDK (mcp 2.x).

Usage: python_sdk_client.py URL TOKEN MODE
MODE is "legacy" (initialize handshake), "auto" (server/discover first, then
fall back) or a modern protocol version such as "2026-07-28".
Prints one JSON object: the negotiated protocol, the tools, and a tool result.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(url: str, token: str, mode: str) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            tools = await client.list_tools()
            result = await client.call_tool("generate_image", {"prompt": "a paper boat", "size": "1024x1536"})
            try:
                refused = await client.call_tool("generate_image", {"prompt": "x", "n": 9})
                text = " ".join(getattr(c, "text", "") for c in refused.content)
                bad = {"code": None, "tool_error": bool(refused.is_error), "message": text}
            except MCPError as error:
                bad = {"code": error.code, "tool_error": False, "message": str(error)}
            print(json.dumps({
                "protocol_version": getattr(client, "protocol_version", None),
                "tools": [t.name for t in tools.tools],
                "is_error": result.is_error,
                "structured": result.structured_content,
                "invalid_arguments": bad,
            }))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
