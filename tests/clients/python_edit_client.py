"""The edit flow with the official MCP Python SDK (mcp 2.x): generate, upload
an image through create_upload (a plain HTTP PUT), edit it by region, and
edit the generated image by its link.

Usage: python_edit_client.py URL TOKEN PNG_FILE
Prints one JSON object with what each step returned.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(url: str, token: str, png_file: str) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http:
        async with Client(streamable_http_client(url, http_client=http), mode="auto") as client:
            generated = await client.call_tool("generate_image", {"prompt": "a quiet harbour"})
            link = generated.structured_content["image_urls"][0]
            ticket = (await client.call_tool("create_upload", {"content_type": "image/png"})).structured_content
            with open(png_file, "rb") as f:
                put = await http.put(ticket["upload_url"], headers=ticket["headers"], content=f.read())
            region = {"x": 0, "y": 0, "width": 256, "height": 256}
            from_upload = await client.call_tool(
                "edit_image", {"prompt": "a red kite", "images": [ticket["reference"]], "mask_region": region})
            from_link = await client.call_tool("edit_image", {"prompt": "make it night", "images": [link]})
            tools = await client.list_tools()
            print(json.dumps({
                "protocol_version": getattr(client, "protocol_version", None),
                "tools": sorted(t.name for t in tools.tools),
                "put_status": put.status_code,
                "from_upload": {"is_error": from_upload.is_error, "structured": from_upload.structured_content},
                "from_link": {"is_error": from_link.is_error, "structured": from_link.structured_content},
            }))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
